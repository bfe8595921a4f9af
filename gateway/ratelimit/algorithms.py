"""The four algorithms for the in-process store, step for step the arithmetic of
`lua/ratelimit.lua` (same integer microseconds, same float divisions, same rounding), so
both stores reach the same decision; a shared test suite proves it.

Each algorithm looks at the state of its key and returns an `Outcome`: the rule's result and,
when it admits, the key's new state, which the store writes only when every blocking rule
admitted. Nothing that counts is written here (a sliding window's log only drops entries
that have left its window), so a refused request changes no later decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway.config.model import Algorithm
from gateway.ratelimit.decision import NEVER, RuleResult
from gateway.ratelimit.rules import Check

SLACK_US = 1_000_000  # a key outlives the moment it stops mattering by this much (as in Lua)
# The tuples of every rule of every decision are made with tuple.__new__ (every field given:
# it knows no defaults): a NamedTuple's own __new__ is a Python function, a frame each.
_new = tuple.__new__


@dataclass(slots=True)  # no per-instance __dict__: one is kept per key (see LocalStore)
class Slot:
    """One key's state and the instant (store clock) it is forgotten."""

    value: Any
    expires_us: int


@dataclass(slots=True)
class SlidingLog:
    """The admitted requests of one key still inside the window, oldest first, flat in one
    list: time, cost, time, cost... from index `head` on. A deque of (time, cost) tuples
    costs 600+ bytes for its first block and 56 more per entry; this list about 100 bytes,
    then 16 per entry plus the time's int (tests/perf/bench_local_store.py)."""

    entries: list[int] = field(default_factory=list)
    head: int = 0  # entries before it have left the window
    total: int = 0  # the cost of the live entries

    def expire(self, edge: int) -> None:
        """Drop entries whose time is <= edge. The list is compacted once the dead part is
        at least half of it, so each entry is moved at most once on average: O(1)."""
        entries, i = self.entries, self.head
        end = len(entries)
        while i < end and entries[i] <= edge:
            self.total -= entries[i + 1]
            i += 2
        if i and i * 2 >= end:
            del entries[:i]
            i = 0
        self.head = i

    def add(self, at: int, cost: int) -> None:
        self.entries += (at, cost)
        self.total += cost

    def retry_us(self, need: int, window: int, now: int) -> int:
        """Until the oldest entries freeing `need` units have left the window."""
        entries, freed = self.entries, 0
        for i in range(self.head, len(entries), 2):
            freed += entries[i + 1]
            if freed >= need:
                return entries[i] + window - now
        return NEVER

    def newest(self) -> int | None:
        return self.entries[-2] if len(self.entries) > self.head else None


class Outcome(NamedTuple):  # a tuple: one per rule of every decision, and a frozen
    # dataclass's __init__ sets each field through object.__setattr__
    result: RuleResult
    # What an admitting rule writes once every blocking rule has admitted: the key's new
    # value and the instant it is forgotten; None when the rule refuses. A sliding window's
    # value is the key's log itself, which takes in `logged` units then.
    value: Any = None
    expires_us: int = 0
    logged: int = 0


def _ttl_us(us: int) -> int:
    return math.ceil(us / 1000) * 1000 + SLACK_US


# Each algorithm reads its key's slot as the store found it: None when the key is absent or
# has expired (as for the Lua script, an expired key is a new one).

def _gcra(units: int, check: Check, now: int, slot: Slot | None) -> Outcome:
    interval = math.ceil(check.window_us / check.limit)
    tat = max(int(slot.value) if slot is not None else now, now)
    capacity = units * interval
    new_tat = tat + check.cost * interval
    diff = new_tat - now
    if check.cost <= units and diff <= capacity:
        return _new(Outcome, (_new(RuleResult, (True, math.floor((capacity - diff) / interval),
                                                diff, 0)), new_tat, now + _ttl_us(diff), 0))
    retry = diff - capacity if check.cost <= units else NEVER
    remaining = max(0, math.floor((capacity - (tat - now)) / interval))
    return _new(Outcome, (_new(RuleResult, (False, remaining, tat - now, retry)), None, 0, 0))


def token_bucket(check: Check, now: int, slot: Slot | None) -> Outcome:
    """Capacity limit+burst refilled at limit/window: a GCRA allowing limit+burst at once."""
    return _gcra(check.limit + check.burst, check, now, slot)


def leaky_bucket(check: Check, now: int, slot: Slot | None) -> Outcome:
    """GCRA, one unit every window/limit, burst+1 units may arrive at once."""
    return _gcra(check.burst + 1, check, now, slot)


def sliding_window(check: Check, now: int, slot: Slot | None) -> Outcome:
    """Exact: an entry counts while its time is > now - window. The admitting outcome's
    value is the key's log, which the store appends the request to."""
    units = check.quota
    log: SlidingLog = slot.value if slot is not None else SlidingLog()
    log.expire(now - check.window_us)
    total = log.total
    if check.cost <= units and total + check.cost <= units:
        return _new(Outcome, (_new(RuleResult, (True, units - total - check.cost,
                                                check.window_us, 0)),
                              log, now + _ttl_us(check.window_us), check.cost))
    retry = NEVER
    if check.cost <= units:
        retry = log.retry_us(total + check.cost - units, check.window_us, now)
    newest = log.newest()
    reset = newest + check.window_us - now if newest is not None else 0
    return _new(Outcome, (_new(RuleResult, (False, max(0, units - total), reset, retry)),
                          None, 0, 0))


def fixed_window(check: Check, now: int, slot: Slot | None) -> Outcome:
    """Windows aligned to the epoch: window n covers [n*window, (n+1)*window)."""
    units = check.quota
    index = now // check.window_us
    reset = (index + 1) * check.window_us - now
    used = slot.value[1] if slot is not None and slot.value[0] == index else 0
    if check.cost <= units and used + check.cost <= units:
        return _new(Outcome, (_new(RuleResult, (True, units - used - check.cost, reset, 0)),
                              (index, used + check.cost), now + _ttl_us(reset), 0))
    retry = reset if check.cost <= units else NEVER
    return _new(Outcome, (_new(RuleResult, (False, max(0, units - used), reset, retry)),
                          None, 0, 0))


ALGORITHMS: dict[Algorithm, Callable[[Check, int, Slot | None], Outcome]] = {
    Algorithm.TOKEN_BUCKET: token_bucket,
    Algorithm.LEAKY_BUCKET: leaky_bucket,
    Algorithm.SLIDING_WINDOW: sliding_window,
    Algorithm.FIXED_WINDOW: fixed_window,
}
