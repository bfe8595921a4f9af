"""flagd's flag-definition JSON (https://flagd.dev/schema/v0/flags.json) read into records.

Checked at load, like the gateway's own config, so `gateway check` reports a bad file: the
state, the variants, the default variant, that targeting is JsonLogic using only operators
the gateway evaluates, and that every `$ref` names an entry of `$evaluators` (flagd itself
reports an unknown `$ref` only when the flag is evaluated; here it refuses the file).
`$ref`s are replaced by their evaluator once, here, so evaluation never looks them up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from json_logic.builtins import BUILTINS

# Operators the JsonLogic library evaluates itself (not in BUILTINS: they take sub-logic).
_LAZY_OPERATORS = frozenset({"if", "?:", "and", "or", "filter", "reduce", "map", "all",
                             "some", "none"})
CUSTOM_OPERATORS = frozenset({"fractional", "sem_ver", "starts_with", "ends_with"})
KNOWN_OPERATORS = frozenset(BUILTINS) | _LAZY_OPERATORS | CUSTOM_OPERATORS
_FLAG_KEYS = ("state", "variants", "defaultVariant", "targeting", "metadata")
_TOP_KEYS = ("$schema", "flags", "$evaluators", "metadata")
_STATES = ("ENABLED", "DISABLED")
_MAX_DEPTH = 64  # nesting of targeting rules, $refs included


@dataclass(frozen=True, slots=True)
class FlagdFlag:
    key: str
    enabled: bool
    variants: Mapping[str, Any]
    default_variant: str | None
    targeting: dict[str, Any] | None  # None: no targeting (static)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""  # the file it came from


@dataclass(frozen=True, slots=True)
class FlagdSet:
    flags: dict[str, FlagdFlag]
    metadata: Mapping[str, Any] = field(default_factory=dict)


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def _metadata(value: object, path: str, problems: _Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(v, (str, int, float, bool)) for v in value.values()):
        problems.add(path, "metadata must map names to strings, numbers or booleans")
        return {}
    return dict(value)


def _resolve(logic: Any, evaluators: Mapping[str, Any], path: str, problems: _Problems,
             depth: int = 0) -> Any:
    """Targeting with every `$ref` replaced, and every operator checked."""
    if depth > _MAX_DEPTH:
        problems.add(path, f"targeting nests deeper than {_MAX_DEPTH} levels (or $refs loop)")
        return None
    if isinstance(logic, list):
        return [_resolve(item, evaluators, f"{path}[{i}]", problems, depth + 1)
                for i, item in enumerate(logic)]
    if not isinstance(logic, dict) or not logic:
        return logic
    if set(logic) == {"$ref"}:
        name = logic["$ref"]
        if not isinstance(name, str) or name not in evaluators:
            known = ", ".join(sorted(evaluators)) or "none"
            problems.add(path, f"$ref {name!r} names no entry of $evaluators (known: {known})")
            return None
        return _resolve(evaluators[name], evaluators, f"$evaluators.{name}", problems,
                        depth + 1)
    if len(logic) != 1:
        problems.add(path, f"a JsonLogic operation has exactly one operator, got "
                           f"{', '.join(sorted(logic))}")
        return None
    op, args = next(iter(logic.items()))
    if op not in KNOWN_OPERATORS:
        problems.add(path, f"unknown JsonLogic operator {op!r}")
        return None
    return {op: _resolve(args, evaluators, f"{path}.{op}", problems, depth + 1)}


def _flag(key: str, value: object, evaluators: Mapping[str, Any], source: str,
          problems: _Problems) -> FlagdFlag | None:
    path = f"flags.{key}"
    if not isinstance(value, dict):
        problems.add(path, "a flag must be a JSON object")
        return None
    for name in value:
        if name not in _FLAG_KEYS:
            problems.add(f"{path}.{name}", f"unknown member (valid: {', '.join(_FLAG_KEYS)})")
    state = value.get("state")
    if state not in _STATES:
        problems.add(f"{path}.state", f"must be ENABLED or DISABLED, got {state!r}")
    variants = value.get("variants")
    if not isinstance(variants, dict) or not variants:
        problems.add(f"{path}.variants", "must be a non-empty object of variant -> value")
        variants = {}
    default = value.get("defaultVariant")
    if default is not None and default not in variants:
        problems.add(f"{path}.defaultVariant", f"{default!r} is not one of the variants "
                     f"({', '.join(variants)})")
    targeting = value.get("targeting")
    if targeting is not None and not isinstance(targeting, dict):
        problems.add(f"{path}.targeting", "must be a JsonLogic object")
        targeting = None
    resolved = _resolve(targeting, evaluators, f"{path}.targeting", problems) \
        if targeting else None
    return FlagdFlag(key=key, enabled=state == "ENABLED", variants=dict(variants),
                     default_variant=default if isinstance(default, str) else None,
                     targeting=resolved or None,
                     metadata=_metadata(value.get("metadata"), f"{path}.metadata", problems),
                     source=source)


def parse_flagd(text: bytes | str, source: str = "") -> tuple[FlagdSet, list[tuple[str, str]]]:
    """The flags of one flagd file, and every problem as (json path, message)."""
    problems = _Problems()
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        problems.add("(json)", f"not valid JSON: {exc}")
        return FlagdSet({}), problems.items
    if not isinstance(data, dict) or not isinstance(data.get("flags"), dict):
        problems.add("(top level)", 'expected a JSON object with "flags": {...}')
        return FlagdSet({}), problems.items
    for name in data:
        if name not in _TOP_KEYS:
            problems.add(name, f"unknown member (valid: {', '.join(_TOP_KEYS)})")
    evaluators = data.get("$evaluators") or {}
    if not isinstance(evaluators, dict):
        problems.add("$evaluators", "must be an object of name -> JsonLogic")
        evaluators = {}
    flags: dict[str, FlagdFlag] = {}
    for key, value in data["flags"].items():
        flag = _flag(key, value, evaluators, source, problems)
        if flag is not None:
            flags[key] = flag
    metadata = _metadata(data.get("metadata"), "metadata", problems)
    return FlagdSet(flags, metadata), problems.items
