"""The in-process store: the four algorithms on a dict, for a gateway without Redis and for
`failure_mode: local` while Redis is unreachable. One process, nothing shared.

A decision runs synchronously (no await between reading and writing), so it is as atomic
as the Lua script. Expired keys are forgotten when read and swept every `SWEEP_EVERY`
decisions, so memory follows the set of keys still in use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.ratelimit.algorithms import ALGORITHMS, Slot
from gateway.ratelimit.decision import Decision, RuleResult
from gateway.ratelimit.plan import Prepared
from gateway.ratelimit.rules import Check

SWEEP_EVERY = 4096


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class LocalStore:
    def __init__(self, clock: Callable[[], int] = wall_clock_us) -> None:
        self.clock = clock
        self.slots: dict[str, Slot] = {}
        self._decisions = 0

    def decide_now(self, checks: Sequence[Check], now_us: int | None = None,
                   commit: bool = True) -> Decision:
        now = self.clock() if now_us is None else now_us
        self._decisions += 1
        if self._decisions % SWEEP_EVERY == 0:
            self.sweep(now)
        live = {}
        for check in checks:
            slot = self.slots.get(check.keys[0])
            if slot is not None and slot.expires_us > now:
                live[check.keys[0]] = slot
        admitted = True
        results: list[RuleResult] = []
        writes = []
        for check in checks:
            outcome = ALGORITHMS[check.rule.algorithm](check, now, live)
            results.append(outcome.result)
            if outcome.write is not None:
                writes.append(outcome.write)
            elif not check.soft:
                admitted = False
        if admitted and commit:
            for write in writes:
                write(self.slots)
        return Decision(admitted, tuple(results))

    async def decide(self, checks: Sequence[Check], now_us: int | None = None,
                     commit: bool = True) -> Decision:
        return self.decide_now(checks, now_us, commit)

    async def decide_prepared(self, prepared: Prepared) -> Decision:
        return self.decide_now(prepared.checks)

    async def reset(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.slots.pop(key, None)

    def sweep(self, now: int) -> None:
        for key in [k for k, slot in self.slots.items() if slot.expires_us <= now]:
            del self.slots[key]
