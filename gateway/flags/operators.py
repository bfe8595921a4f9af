"""Targeting rules compiled into predicates over a request context.

Each `TargetRule` (already parsed: regexes compiled, networks and semvers parsed, numbers
converted) becomes one closure `ctx -> bool`. A missing attribute never matches, whatever the
operator (even not_equals / not_in), and a value that does not parse for the operator (a
version that is not semver, an IP that is not an IP) does not match either: nothing raises.
Comparisons are exact and case-sensitive; `equals`/`in` match when the attribute equals any
listed value, `not_equals`/`not_in` when it equals none.
"""

from __future__ import annotations

import operator
import socket
from collections.abc import Callable
from typing import Any

from gateway.config.model import IPNetwork, Operator, TargetRule
from gateway.context import Memo, RequestContext
from gateway.semver import SemVer, parse_semver

Predicate = Callable[[RequestContext], bool]
Test = Callable[[str], bool]
Getter = Callable[[RequestContext], "str | None"]


def attribute_getter(name: str) -> Getter:
    """`user_id` -> ctx.user_id; `attributes.x` -> ctx.attributes.get('x'); "" reads as None."""
    if name.startswith("attributes."):
        attr = name[len("attributes."):]
        return lambda ctx: ctx.attributes.get(attr) or None
    read: Callable[[RequestContext], str | None] = operator.attrgetter(name)
    return lambda ctx: read(ctx) or None


def _semver(text: str) -> SemVer | None:
    try:
        return parse_semver(text)
    except ValueError:
        return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _ip_int(text: str) -> tuple[int, int] | None:
    """(version, address as int) with inet_pton: several times faster than ipaddress."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        pass
    try:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        return None


def _memoised(test: Test) -> Test:
    """`test` remembered per value: for operators that parse the value (versions, numbers,
    addresses) or run regexes, whose values repeat across requests. A remembered verdict
    costs one C-level dict lookup, no Python frame."""
    return Memo(test).__getitem__


def _cidr(networks: tuple[IPNetwork, ...]) -> Test:
    spans = tuple((n.version, int(n.network_address), int(n.netmask)) for n in networks)

    def test(value: str) -> bool:
        parsed = _ip_int(value)
        if parsed is None:
            return False
        version, address = parsed
        return any(v == version and address & mask == net for v, net, mask in spans)

    return _memoised(test)


def _compare(parse: Callable[[str], Any], compare: Callable[[Any, Any], bool],
             values: tuple[Any, ...]) -> Test:
    def test(value: str) -> bool:
        parsed = parse(value)
        return parsed is not None and any(compare(parsed, v) for v in values)

    return _memoised(test)


def _make_test(op: Operator, values: tuple[Any, ...]) -> Test:
    if op in (Operator.EQUALS, Operator.IN):
        members = frozenset(values)
        return members.__contains__
    if op in (Operator.NOT_EQUALS, Operator.NOT_IN):
        members = frozenset(values)
        return lambda v: v not in members
    if op is Operator.CONTAINS:
        return lambda v: any(part in v for part in values)
    if op is Operator.STARTS_WITH:
        prefixes = tuple(values)
        return lambda v: v.startswith(prefixes)
    if op is Operator.ENDS_WITH:
        suffixes = tuple(values)
        return lambda v: v.endswith(suffixes)
    if op is Operator.REGEX:
        return _memoised(lambda v: any(p.fullmatch(v) is not None for p in values))
    if op is Operator.CIDR:
        return _cidr(values)
    if op in _ORDERS:
        compare = _ORDERS[op]
        parse = _semver if op.value.startswith("semver_") else _number
        return _compare(parse, compare, values)
    raise ValueError(f"no implementation for operator {op}")  # pragma: no cover - enum is closed


_ORDERS: dict[Operator, Callable[[Any, Any], bool]] = {
    Operator.SEMVER_EQ: operator.eq, Operator.SEMVER_LT: operator.lt,
    Operator.SEMVER_LTE: operator.le, Operator.SEMVER_GT: operator.gt,
    Operator.SEMVER_GTE: operator.ge, Operator.LT: operator.lt, Operator.LTE: operator.le,
    Operator.GT: operator.gt, Operator.GTE: operator.ge,
}


def rule_test(rule: TargetRule) -> Test:
    """The rule's operator and values as a test of one attribute value (never None or "")."""
    return _make_test(rule.operator, rule.compiled or rule.values)


def test_code(test: Test, value: str, const: Callable[[Any], str]) -> str:
    """A Python expression applying `test` to the expression `value` (a non-empty string),
    for generated code (gateway/flags/plan.py); `const(x)` names a constant holding x.
    A set membership is written as `in`, which spares the call of the bound method. (A
    remembered verdict stays a call of its Memo's bound `__getitem__`.)"""
    if type(getattr(test, "__self__", None)) is frozenset and \
            getattr(test, "__name__", "") == "__contains__":
        return f"{value} in {const(test.__self__)}"  # type: ignore[attr-defined]
    return f"{const(test)}({value})"


def predicate(attribute: str, test: Test) -> Predicate:
    """`test` applied to a context's `attribute`; a missing or empty attribute never matches."""
    if attribute.startswith("attributes."):
        attr = attribute[len("attributes."):]

        def match_attribute(ctx: RequestContext) -> bool:
            value = ctx.attributes.get(attr)
            return test(value) if value else False

        return match_attribute
    read: Callable[[RequestContext], str | None] = operator.attrgetter(attribute)

    def match(ctx: RequestContext) -> bool:
        value = read(ctx)
        return test(value) if value else False

    return match
