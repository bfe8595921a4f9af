"""Rate-limit response fields (pure): draft-ietf-httpapi-ratelimit-headers and the legacy
X-RateLimit-* trio, describing the most restrictive rule of the decision (CONTRACT.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.config.model import HeaderStyle
from gateway.ratelimit.decision import NEVER, RuleResult
from gateway.ratelimit.rules import Check


def whole_seconds(us: int) -> int:
    """Rounded up, so a client waiting this long is never early."""
    return math.ceil(us / 1_000_000)


def retry_after(checks: Sequence[Check], results: Sequence[RuleResult]) -> int:
    """Retry-After for a refusal: when every refusing rule would admit; at least 1 s.

    A cost larger than a rule's whole quota is never admitted; we then name the rule's
    window, the best hint a client can act on.
    """
    waits = [whole_seconds(c.window_us if r.retry_us == NEVER else r.retry_us)
             for c, r in zip(checks, results) if not r.allowed and not c.soft]
    return max([1, *waits])


def most_restrictive(checks: Sequence[Check], results: Sequence[RuleResult]) -> int:
    """The refusing rule admitting last; else the rule with the fewest units left."""
    def weight(i: int) -> tuple[int, int, int]:
        r = results[i]
        if not r.allowed:
            wait = checks[i].window_us if r.retry_us == NEVER else r.retry_us
            return (0, -wait, 0)
        return (1, r.remaining, -r.reset_us)

    return min(range(len(checks)), key=weight)


def rate_limit_fields(style: HeaderStyle, check: Check, result: RuleResult
                      ) -> list[tuple[str, str]]:
    if style is HeaderStyle.NONE:
        return []
    wait = result.reset_us if result.allowed else (
        check.window_us if result.retry_us == NEVER else result.retry_us)
    reset = whole_seconds(wait)
    fields: list[tuple[str, str]] = []
    if style in (HeaderStyle.IETF, HeaderStyle.BOTH):
        name = check.rule.name
        fields.append(("RateLimit-Policy",
                       f'"{name}";q={check.quota};w={whole_seconds(check.window_us)}'))
        fields.append(("RateLimit", f'"{name}";r={result.remaining};t={reset}'))
    if style in (HeaderStyle.LEGACY, HeaderStyle.BOTH):
        fields.append(("X-RateLimit-Limit", str(check.quota)))
        fields.append(("X-RateLimit-Remaining", str(result.remaining)))
        fields.append(("X-RateLimit-Reset", str(reset)))
    return fields
