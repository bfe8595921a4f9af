"""What a store answers for one request: a decision over all its rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gateway.ratelimit.rules import Check

if TYPE_CHECKING:
    from gateway.ratelimit.plan import Prepared

_new = tuple.__new__
NEVER = -1  # retry_us of a cost larger than the rule's whole quota


class RuleResult(NamedTuple):  # a tuple: built for every rule of every request
    allowed: bool
    remaining: int
    reset_us: int  # until the rule is fully replenished (fixed window: until the window ends)
    retry_us: int  # refused: until this cost would be admitted; NEVER if it never would


class Decision(NamedTuple):  # a tuple too: one per request
    admitted: bool
    results: tuple[RuleResult, ...]

    @classmethod
    def from_flat(cls, flat: Sequence[int]) -> Decision:
        """The Lua script's reply: admitted, then four integers per rule (Redis integer
        replies: hiredis hands them over as ints already)."""
        # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function, one
        # frame per rule of every request.
        return _new(cls, (flat[0] == 1, tuple([
            _new(RuleResult, (flat[i] == 1, flat[i + 1], flat[i + 2], flat[i + 3]))
            for i in range(1, len(flat), 4)
        ])))


class LimitStore(Protocol):
    """Both stores: decide all checks atomically; `now_us` fixes the clock (tests only)."""

    async def decide(self, checks: Sequence[Check], now_us: int | None = None,
                     commit: bool = True) -> Decision: ...

    async def decide_prepared(self, prepared: Prepared) -> Decision:
        """`decide(prepared.checks)` for a request, with what can be reused memoised."""
        ...

    async def reset(self, keys: Sequence[str]) -> None: ...
