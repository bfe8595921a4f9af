"""Evaluating one flagd flag for a context: flagd's rules for what targeting returns.

No targeting: the default variant, reason STATIC. Targeting that returns a variant name (a
boolean counts as "true"/"false"): that variant, TARGETING_MATCH. Targeting that returns
null, or an operator that cannot use its arguments (flagd-testbed's operator-errors
scenarios): the default variant, DEFAULT. A name that is no variant, or targeting that fails:
ERROR with code GENERAL, and the caller's default applies. A disabled flag: no value (the
caller's default), DISABLED, as flagd's evaluator answers. A flag with no default variant
that falls back to it has no value at all (OFREP then omits `value`: the code default
applies).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from json_logic import jsonLogic
from json_logic.builtins import BUILTINS

from gateway.config.model import Bucketing
from gateway.flagd.definition import FlagdFlag
from gateway.flagd.operators import Operator, Unusable, flagd_operators

log = logging.getLogger("gateway.flagd")

_OPERATORS: dict[Bucketing, dict[str, Operator]] = {
    scheme: {**BUILTINS, **flagd_operators(scheme)} for scheme in Bucketing}


@dataclass(frozen=True, slots=True)
class FlagdOutcome:
    value: Any
    variant: str | None
    reason: str  # an OpenFeature reason: STATIC, TARGETING_MATCH, DEFAULT, DISABLED, ERROR
    error_code: str | None = None
    error: str = ""

    @property
    def has_value(self) -> bool:
        return self.variant is not None


def _default(flag: FlagdFlag, reason: str) -> FlagdOutcome:
    name = flag.default_variant
    if name is None:
        return FlagdOutcome(None, None, "DEFAULT")
    return FlagdOutcome(flag.variants[name], name, reason)


def _variant_name(result: Any) -> str | None:
    if isinstance(result, bool):
        return "true" if result else "false"
    if isinstance(result, (str, int)):
        return str(result)
    return None


def evaluate_flagd(flag: FlagdFlag, data: dict[str, Any], bucketing: Bucketing,
                   now: float) -> FlagdOutcome:
    """`data` is the context as JsonLogic reads it; `$flagd` is added here."""
    if not flag.enabled:
        return FlagdOutcome(None, None, "DISABLED")
    if flag.targeting is None:
        return _default(flag, "STATIC")
    logic_data = {**data, "$flagd": {"flagKey": flag.key, "timestamp": int(now)}}
    try:
        result = jsonLogic(flag.targeting, logic_data, _OPERATORS[bucketing])
    except Unusable as exc:
        log.debug("flag %r: %s; serving the default variant", flag.key, exc)
        return _default(flag, "DEFAULT")
    except Exception as exc:  # any failure of a rule serves the caller's default
        log.debug("flag %r: targeting failed: %s", flag.key, exc)
        return FlagdOutcome(None, None, "ERROR", "GENERAL", f"targeting failed: {exc}")
    if result is None:
        return _default(flag, "DEFAULT")
    name = _variant_name(result)
    if name is None or name not in flag.variants:
        return FlagdOutcome(None, None, "ERROR", "GENERAL",
                            f"targeting chose {result!r}, which is not a variant of {flag.key!r}")
    return FlagdOutcome(flag.variants[name], name, "TARGETING_MATCH")
