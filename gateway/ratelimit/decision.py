"""What a store answers for one request: a decision over all its rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from gateway.ratelimit.rules import Check

NEVER = -1  # retry_us of a cost larger than the rule's whole quota


class RuleResult(NamedTuple):  # a tuple: built for every rule of every request
    allowed: bool
    remaining: int
    reset_us: int  # until the rule is fully replenished (fixed window: until the window ends)
    retry_us: int  # refused: until this cost would be admitted; NEVER if it never would


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    results: tuple[RuleResult, ...]

    @classmethod
    def from_flat(cls, flat: Sequence[int]) -> Decision:
        """The Lua script's reply: admitted, then four integers per rule."""
        return cls(bool(flat[0]), tuple(
            RuleResult(bool(flat[i]), int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]))
            for i in range(1, len(flat), 4)
        ))


class LimitStore(Protocol):
    """Both stores: decide all checks atomically; `now_us` fixes the clock (tests only)."""

    async def decide(self, checks: Sequence[Check], now_us: int | None = None,
                     commit: bool = True) -> Decision: ...

    async def reset(self, keys: Sequence[str]) -> None: ...
