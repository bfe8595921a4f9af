"""Rate-limit response fields (pure): draft-ietf-httpapi-ratelimit-headers and the legacy
X-RateLimit-* trio, describing the most restrictive rule of the decision (CONTRACT.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import ceil

from gateway.config.model import HeaderStyle
from gateway.ratelimit.decision import NEVER, RuleResult
from gateway.ratelimit.rules import Check


def whole_seconds(us: int) -> int:
    """Rounded up, so a client waiting this long is never early."""
    return ceil(us / 1_000_000)


def retry_after(checks: Sequence[Check], results: Sequence[RuleResult]) -> int:
    """Retry-After for a refusal: when every refusing rule would admit; at least 1 s.

    A cost larger than a rule's whole quota is never admitted; we then name the rule's
    window, the best hint a client can act on.
    """
    waits = [whole_seconds(c.window_us if r.retry_us == NEVER else r.retry_us)
             for c, r in zip(checks, results, strict=True) if not r.allowed and not c.soft]
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


Fields = tuple[tuple[str, str], ...]
FieldMaker = Callable[[int, int], Fields]


def field_maker(style: HeaderStyle, check: Check) -> FieldMaker:
    """The fields describing `check`, as a function of (units remaining, microseconds until
    the client should look again): everything that does not change per request (the policy,
    the limit, the rule's name) is formatted here once per route plan entry."""
    if style is HeaderStyle.NONE:
        return lambda remaining, wait_us: ()
    name = check.rule.name
    policy = ("RateLimit-Policy", f'"{name}";q={check.quota};w={whole_seconds(check.window_us)}')
    limit = ("X-RateLimit-Limit", str(check.quota))
    prefix = f'"{name}";r='
    if style is HeaderStyle.IETF:  # the default: whole_seconds inlined, one frame less
        return lambda remaining, wait_us: (
            policy, ("RateLimit", f"{prefix}{remaining};t={ceil(wait_us / 1_000_000)}"))
    if style is HeaderStyle.LEGACY:
        return lambda remaining, wait_us: (
            limit, ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(whole_seconds(wait_us))))

    def both(remaining: int, wait_us: int) -> Fields:
        reset = whole_seconds(wait_us)
        return (policy, ("RateLimit", f"{prefix}{remaining};t={reset}"), limit,
                ("X-RateLimit-Remaining", str(remaining)), ("X-RateLimit-Reset", str(reset)))

    return both


def wait_us(check: Check, result: RuleResult) -> int:
    """Until the client should look again: the refill, or the retry (the window if never)."""
    if result.allowed:
        return result.reset_us
    return check.window_us if result.retry_us == NEVER else result.retry_us


def rate_limit_fields(style: HeaderStyle, check: Check, result: RuleResult
                      ) -> list[tuple[str, str]]:
    return list(field_maker(style, check)(result.remaining, wait_us(check, result)))
