"""flagd's custom JsonLogic operators: fractional, sem_ver, starts_with, ends_with.

Semantics follow flagd's evaluator and its conformance suite (open-feature/flagd-testbed,
evaluator/gherkin/*.feature): an operator given arguments it cannot use (a version that is
no semantic version, a number where a string belongs, no bucketing value, weights summing to
zero) raises `Unusable`, and the flag serves its default variant with reason DEFAULT, even
when the operator sits inside an `if` whose other branch names a variant.

Bucketing (`fractional`) comes in two schemes:
- flagd-v2 (flagd today): murmur3 x86 32-bit, seed 0, of the UTF-8 bucketing string; with
  no explicit bucketing value, the string is flagKey + targetingKey. bucket = (hash * total
  weight) >> 32, the first variant whose cumulative weight exceeds it wins: the same
  thresholds as the gateway's own flags (gateway.flags.evaluate.thresholds).
- flagd-v3 (newer in-process providers, the "fractional-non-string-rand-units" scheme): the
  same arithmetic over murmur3 of the canonical CBOR encoding (RFC 8949 §4.2) of the
  bucketing value, any JSON value; with none, of the list [flagKey, targetingKey]. Whole
  floats are encoded as integers first, so 1.0 and 1 land in the same bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import cbor2
import mmh3

from gateway.config.model import Bucketing
from gateway.semver import parse_semver

log = logging.getLogger("gateway.flagd")

MAX_WEIGHT_SUM = 2_147_483_647  # flagd refuses a total above MaxInt32
Operator = Callable[..., Any]


class Unusable(Exception):
    """An operator cannot work with its arguments: the flag falls back to its default."""


def _flag_key(data: dict[str, Any]) -> str:
    flagd = data.get("$flagd")
    key = flagd.get("flagKey") if isinstance(flagd, dict) else None
    return key if isinstance(key, str) else ""


def _targeting_key(data: dict[str, Any]) -> str | None:
    key = data.get("targetingKey")
    return key if isinstance(key, str) and key else None


def _v2_hash(data: dict[str, Any], args: Sequence[Any]) -> tuple[int | None, Sequence[Any]]:
    first = args[0]
    if isinstance(first, str):
        return mmh3.hash(first, 0, False), args[1:]
    if not isinstance(first, list):
        return None, args  # a bucketing value that is missing or not a string
    targeting_key = _targeting_key(data)
    if targeting_key is None:
        return None, args
    return mmh3.hash(_flag_key(data) + targeting_key, 0, False), args


def whole_floats_as_integers(value: Any) -> Any:
    """1.0 -> 1 (within the 64-bit integer range), recursively: flagd-v3's number rule."""
    if isinstance(value, dict):
        return {k: whole_floats_as_integers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [whole_floats_as_integers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value <= 2**64 - 1:
        return int(value)
    return value


def v3_hash_input(value: Any) -> bytes:
    return cbor2.dumps(whole_floats_as_integers(value), canonical=True)


def v3_shorthand_input(flag_key: str, targeting_key: str) -> bytes:
    """What flagd-v3 hashes for the shorthand form: the list [flagKey, targetingKey]."""
    return cbor2.dumps([flag_key, targeting_key], canonical=True)


def _v3_hash(data: dict[str, Any], args: Sequence[Any]) -> tuple[int | None, Sequence[Any]]:
    first = args[0]
    if isinstance(first, list):
        targeting_key = _targeting_key(data)
        if targeting_key is None:
            return None, args
        return mmh3.hash(v3_shorthand_input(_flag_key(data), targeting_key), 0, False), args
    if first is None:
        return None, args
    value, args = first, args[1:]
    try:
        encoded = v3_hash_input(value)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return None, args
    return mmh3.hash(encoded, 0, False), args


def _buckets(args: Sequence[Any]) -> list[tuple[Any, int]] | None:
    """[[variant, weight?], ...] -> (variant, weight) pairs; None when malformed."""
    out: list[tuple[Any, int]] = []
    for arg in args:
        if not isinstance(arg, list) or not 1 <= len(arg) <= 2:
            return None
        weight = arg[1] if len(arg) == 2 else 1
        if isinstance(weight, bool) or not isinstance(weight, int):
            return None
        out.append((arg[0], max(0, weight)))  # a negative weight counts as 0 (flagd)
    return out


_NONE = object()


def pick(hash_value: int, buckets: Sequence[tuple[Any, int]]) -> Any:
    """The variant whose cumulative weight first exceeds (hash * total) >> 32."""
    total = sum(weight for _, weight in buckets)
    if total <= 0 or total > MAX_WEIGHT_SUM:
        return _NONE
    bucket = (hash_value * total) >> 32
    running = 0
    for variant, weight in buckets:
        running += weight
        if bucket < running:
            return variant
    return _NONE  # unreachable: bucket < total


def fractional_operator(bucketing: Bucketing) -> Operator:
    hasher = _v3_hash if bucketing is Bucketing.FLAGD_V3 else _v2_hash

    def fractional(data: dict[str, Any], *args: Any) -> Any:
        if not args:
            raise Unusable("fractional needs arguments")
        hash_value, rest = hasher(data, args)
        if hash_value is None:
            raise Unusable("fractional has no bucketing value (nor a targetingKey)")
        buckets = _buckets(rest)
        if not buckets:
            raise Unusable("fractional needs [variant, weight] lists")
        chosen = pick(hash_value, buckets)
        if chosen is _NONE:
            raise Unusable("fractional weights must sum to between 1 and 2^31 - 1")
        return chosen

    return fractional


def _strings(name: str, args: Sequence[Any]) -> tuple[str, str]:
    if len(args) != 2 or not all(isinstance(a, str) for a in args):
        raise Unusable(f"{name} needs two strings, got {list(args)!r}")
    return args[0], args[1]


def starts_with(data: dict[str, Any], *args: Any) -> bool:
    text, prefix = _strings("starts_with", args)
    return text.startswith(prefix)


def ends_with(data: dict[str, Any], *args: Any) -> bool:
    text, suffix = _strings("ends_with", args)
    return text.endswith(suffix)


_SEMVER_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "^": lambda a, b: a[0] == b[0],  # same major
    "~": lambda a, b: a[:2] == b[:2],  # same major and minor
}


def sem_ver(data: dict[str, Any], *args: Any) -> bool:
    if len(args) != 3 or args[1] not in _SEMVER_TESTS:
        raise Unusable(f"sem_ver needs [version, operator, version], got {list(args)!r}")
    try:
        left, right = parse_semver(str(args[0])), parse_semver(str(args[2]))
    except ValueError as exc:
        raise Unusable(str(exc)) from None
    return _SEMVER_TESTS[args[1]](left, right)


def flagd_operators(bucketing: Bucketing) -> dict[str, Operator]:
    return {"fractional": fractional_operator(bucketing), "sem_ver": sem_ver,
            "starts_with": starts_with, "ends_with": ends_with}
