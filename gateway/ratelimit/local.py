"""The in-process store: the four algorithms on a dict, for a gateway without Redis and for
`failure_mode: local` while Redis is unreachable. One process, nothing shared.

A decision runs synchronously (no await between reading and writing), so it is as atomic
as the Lua script. Expired keys are forgotten when read and swept every `SWEEP_EVERY`
decisions, so memory follows the set of keys still in use.

Bounded: at most `max_keys` keys (`rate_limits_local_max_keys`), the least recently used
forgotten first, so a flood of new client addresses or user ids cannot grow the process
without end. Forgetting a key gives its client a fresh quota: the bound trades exactness
for the oldest keys against memory. The order is an OrderedDict's: a decision moves the keys
it reads to the end (`move_to_end`, O(1)) and eviction pops from the front (O(1));
tests/perf/bench_local_store.py measures what that costs per decision and per key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gateway import metrics
from gateway.ratelimit.algorithms import ALGORITHMS, Outcome, Slot
from gateway.ratelimit.decision import Decision, RuleResult
from gateway.ratelimit.plan import Prepared
from gateway.ratelimit.rules import Check

_new = tuple.__new__
SWEEP_EVERY = 4096
DEFAULT_MAX_KEYS = 100_000


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class LocalStore:
    def __init__(self, clock: Callable[[], int] = wall_clock_us,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.clock = clock
        self.slots: OrderedDict[str, Slot] = OrderedDict()  # least recently used first
        self.max_keys = max_keys
        self.evictions = 0
        self._decisions = 0

    def bound(self, max_keys: int) -> None:
        """Apply a (reloaded) `rate_limits_local_max_keys`; a smaller bound evicts at once."""
        self.max_keys = max_keys
        self._evict()

    def decide_now(self, checks: Sequence[Check], now_us: int | None = None,
                   commit: bool = True) -> Decision:
        now = self.clock() if now_us is None else now_us
        self._decisions += 1
        if self._decisions % SWEEP_EVERY == 0:
            self.sweep(now)
        slots = self.slots
        admitted = True
        results: list[RuleResult] = []
        writes: list[tuple[str, Slot | None, Outcome]] = []
        for check in checks:
            key = check.keys[0]
            slot = found = slots.get(key)
            if found is not None:
                slots.move_to_end(key)  # recently used; a new key is written at the end
                if found.expires_us <= now:
                    slot = None  # expired: a new key, as for the Lua script
            outcome = ALGORITHMS[check.rule.algorithm](check, now, slot)
            results.append(outcome.result)
            if outcome.value is not None:
                writes.append((key, found, outcome))
            elif not check.soft:
                admitted = False
        if admitted and commit:
            for key, found, (_, value, expires_us, logged) in writes:
                if logged:
                    value.add(now, logged)
                if found is None:
                    slots[key] = Slot(value, expires_us)
                else:  # in place: no new object per admitted rule
                    found.value, found.expires_us = value, expires_us
            if len(slots) > self.max_keys:
                self._evict()
        return _new(Decision, (admitted, tuple(results)))  # no __new__ frame

    async def decide(self, checks: Sequence[Check], now_us: int | None = None,
                     commit: bool = True) -> Decision:
        return self.decide_now(checks, now_us, commit)

    async def decide_prepared(self, prepared: Prepared) -> Decision:
        return self.decide_now(prepared.checks)

    async def reset(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.slots.pop(key, None)

    def _evict(self) -> None:
        """Forget the least recently used keys beyond the bound (the keys this decision
        touched are the most recent, so they stay unless the bound is below one request's
        rule count)."""
        slots = self.slots
        excess = len(slots) - self.max_keys
        if excess <= 0:
            return
        for _ in range(excess):
            slots.popitem(last=False)
        self.evictions += excess
        metrics.RATELIMIT_LOCAL_EVICTIONS.inc(excess)

    def sweep(self, now: int) -> None:
        for key in [k for k, slot in self.slots.items() if slot.expires_us <= now]:
            del self.slots[key]
