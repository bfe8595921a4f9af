"""The four algorithms for the in-process store, step for step the arithmetic of
`lua/ratelimit.lua` (same integer microseconds, same float divisions, same rounding), so
both stores reach the same decision; a shared test suite proves it.

Each algorithm looks at the state of its key and returns an `Outcome` with a `write` that
consumes the cost; the store runs the writes only when every blocking rule admitted.
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
# The tuples of every rule of every decision are made with tuple.__new__: a NamedTuple's own
# __new__ is a Python function, a frame each.
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


Write = Callable[[dict[str, Slot]], None]


class Outcome(NamedTuple):  # a tuple: one per rule of every decision, and a frozen
    # dataclass's __init__ sets each field through object.__setattr__
    result: RuleResult
    write: Write | None = None


def _ttl_us(us: int) -> int:
    return math.ceil(us / 1000) * 1000 + SLACK_US


def _put(data: dict[str, Slot], key: str, value: Any, expires_us: int) -> None:
    """The key's slot updated in place when it has one: no new object per admitted rule."""
    slot = data.get(key)
    if slot is None:
        data[key] = Slot(value, expires_us)
    else:
        slot.value, slot.expires_us = value, expires_us


def _gcra(units: int, check: Check, now: int, slots: dict[str, Slot]) -> Outcome:
    key = check.keys[0]
    interval = math.ceil(check.window_us / check.limit)
    slot = slots.get(key)
    tat = max(int(slot.value) if slot is not None else now, now)
    capacity = units * interval
    new_tat = tat + check.cost * interval
    diff = new_tat - now
    if check.cost <= units and diff <= capacity:
        def write(data: dict[str, Slot]) -> None:
            _put(data, key, new_tat, now + _ttl_us(diff))

        return _new(Outcome, (_new(RuleResult, (True, math.floor((capacity - diff) / interval),
                                                diff, 0)), write))
    retry = diff - capacity if check.cost <= units else NEVER
    remaining = max(0, math.floor((capacity - (tat - now)) / interval))
    return _new(Outcome, (_new(RuleResult, (False, remaining, tat - now, retry)), None))


def token_bucket(check: Check, now: int, slots: dict[str, Slot]) -> Outcome:
    """Capacity limit+burst refilled at limit/window: a GCRA allowing limit+burst at once."""
    return _gcra(check.limit + check.burst, check, now, slots)


def leaky_bucket(check: Check, now: int, slots: dict[str, Slot]) -> Outcome:
    """GCRA, one unit every window/limit, burst+1 units may arrive at once."""
    return _gcra(check.burst + 1, check, now, slots)


def sliding_window(check: Check, now: int, slots: dict[str, Slot]) -> Outcome:
    """Exact: an entry counts while its time is > now - window."""
    key = check.keys[0]
    units = check.quota
    edge = now - check.window_us
    slot = slots.get(key)
    log: SlidingLog = slot.value if slot is not None else SlidingLog()
    log.expire(edge)
    total = log.total
    if check.cost <= units and total + check.cost <= units:
        def write(data: dict[str, Slot]) -> None:
            log.add(now, check.cost)
            _put(data, key, log, now + _ttl_us(check.window_us))

        return _new(Outcome, (_new(RuleResult, (True, units - total - check.cost,
                                                check.window_us, 0)), write))
    retry = NEVER
    if check.cost <= units:
        retry = log.retry_us(total + check.cost - units, check.window_us, now)
    newest = log.newest()
    reset = newest + check.window_us - now if newest is not None else 0
    return _new(Outcome, (_new(RuleResult, (False, max(0, units - total), reset, retry)), None))


def fixed_window(check: Check, now: int, slots: dict[str, Slot]) -> Outcome:
    """Windows aligned to the epoch: window n covers [n*window, (n+1)*window)."""
    key = check.keys[0]
    units = check.quota
    index = now // check.window_us
    reset = (index + 1) * check.window_us - now
    slot = slots.get(key)
    used = slot.value[1] if slot is not None and slot.value[0] == index else 0
    if check.cost <= units and used + check.cost <= units:
        def write(data: dict[str, Slot]) -> None:
            _put(data, key, (index, used + check.cost), now + _ttl_us(reset))

        return _new(Outcome, (_new(RuleResult, (True, units - used - check.cost, reset, 0)),
                              write))
    retry = reset if check.cost <= units else NEVER
    return _new(Outcome, (_new(RuleResult, (False, max(0, units - used), reset, retry)), None))


ALGORITHMS: dict[Algorithm, Callable[[Check, int, dict[str, Slot]], Outcome]] = {
    Algorithm.TOKEN_BUCKET: token_bucket,
    Algorithm.LEAKY_BUCKET: leaky_bucket,
    Algorithm.SLIDING_WINDOW: sliding_window,
    Algorithm.FIXED_WINDOW: fixed_window,
}
