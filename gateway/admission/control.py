"""Admission for one upstream: a limit on requests in flight and a priority queue before it.

Pure: every call is given the time, and waiters are plain records; the asyncio driver
(`gateway.admission.gate`) turns them into futures. A call may settle waiters (grant them a
permit, or shed them); it appends them to `settled` for the driver to wake.

The queue has one FIFO per class, and a higher class always leaves first. A request is
refused at once rather than left to time out when:

- its expected wait (the waiters it would stand behind, times the mean time a permit is
  held, over the limit) is longer than its class's `max_wait`, or, while the queue is
  standing (below), longer than `target_delay`: the answer then costs the client
  nothing but a round trip, where a timeout would have cost it the whole `max_wait`;
- the queue is full (`queue_size`) and no waiter of a lower class can make room: an
  arrival displaces the newest waiter of the lowest class below its own.

A waiter still queued at its class's `max_wait` is shed then (later arrivals of higher
classes can push it back past its estimate).

Against standing queues, CoDel (Nichols and Jacobson, "Controlling Queue Delay", 2012) as
Facebook applied it to request queues ("Fail at Scale", 2015): when the oldest waiter has
been older than `target_delay` for a whole `interval`, the queue is standing; from then
until it next empties, waiters of the lowest class older than `target_delay` are shed,
oldest first, and an arrival that no lower-class waiter stands behind may expect at most
`target_delay`. Leaving that state only when the queue empties (not when it dips below
the target) keeps it from oscillating under steady overload, where the short waits it
enforces would otherwise end it at once.

Critical requests are exempt from CoDel: they pass every other class anyway, and their
`max_wait` and the estimate at arrival bound their queue. Measured on a busy host, a CoDel
that also shed them shed critical requests for the gateway's own scheduling delays
(tests/perf/bench_admission.py: 259 of 951 in one run) while bulk work was waiting.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from itertools import takewhile

from gateway.admission.limit import GradientLimit, Limit, StaticLimit
from gateway.config.model import PRIORITIES, Admission

GRANTED = "granted"
# Why a request was shed (gateway_admission_shed_total's `reason`).
QUEUE_FULL, MAX_WAIT, CODEL, DRAIN = "queue_full", "max_wait", "codel", "drain"
REASONS = (QUEUE_FULL, MAX_WAIT, CODEL, DRAIN)
RTT_WEIGHT = 0.1  # of each new sample in the mean time a permit is held


@dataclass(slots=True, eq=False)
class Waiter:
    """One queued request; `outcome` is GRANTED or a shed reason once settled."""

    rank: int  # index in PRIORITIES: 0 is critical
    enqueued: float
    deadline: float
    outcome: str | None = None
    token: object = None  # the driver's (a future)


def _split(amount: int, workers: int) -> int:
    """A worker's part of an instance-wide amount: an equal split, at least 1 of a non-zero
    amount."""
    return max(1, amount // workers) if amount else 0


def share_of(settings: Admission, workers: int) -> Limit:
    """This worker's part of an instance-wide limit: an equal split, at least 1 each."""
    if settings.max_concurrency is not None:
        return StaticLimit(_split(settings.max_concurrency, workers))
    low = _split(settings.min, workers)
    return GradientLimit(low, max(low, _split(settings.max, workers)))


class Controller:
    def __init__(self, settings: Admission, workers: int = 1) -> None:
        self.limiter = share_of(settings, workers)
        self.settings = settings
        self.queue_size = _split(settings.queue_size, workers)
        self.queues: list[OrderedDict[Waiter, None]] = [OrderedDict() for _ in PRIORITIES]
        self.inflight = 0
        self.waiting = 0
        self.rtt = 0.0  # mean time a permit is held; 0 until the first one comes back
        self.settled: list[Waiter] = []
        self.standing = False  # CoDel's dropping state
        self._above_since: float | None = None
        self._cap: float | None = None  # draining: nobody waits past this
        self.max_wait = tuple(settings.max_wait[p] for p in PRIORITIES)

    def configure(self, settings: Admission, workers: int, now: float) -> None:
        """Take reloaded settings: waiters and permits out stay; a limit whose kind or
        bounds changed starts afresh."""
        old, self.settings = self.settings, settings
        if (old.max_concurrency, old.min, old.max) != \
                (settings.max_concurrency, settings.min, settings.max):
            self.limiter = share_of(settings, workers)
        self.max_wait = tuple(settings.max_wait[p] for p in PRIORITIES)
        self.queue_size = _split(settings.queue_size, workers)
        self._dispatch(now)

    @property
    def limit(self) -> int:
        return self.limiter.limit

    # ------------------------------------------------------------------ requests
    def arrive(self, rank: int, now: float) -> Waiter | str | None:
        """None: admitted, holding a permit. A Waiter: queued. A string: shed, and why."""
        if self.inflight < self.limiter.limit and not self.waiting:
            self.inflight += 1
            return None
        self.limiter.saturated = True
        self._codel(now)
        budget, reason = self.max_wait[rank], MAX_WAIT
        if self.standing and rank and not any(self.queues[rank + 1:]):
            # Only an arrival that would stand last is held to the target: one that goes
            # before waiters of a lower class keeps its own max_wait, and CoDel sheds
            # those lower waiters instead (lower classes are shed first). The head of
            # the queue stays open, however slow the upstream.
            held = max(self.settings.target_delay, self.expected_wait(0))
            if held < budget:
                budget, reason = held, CODEL
        if self._cap is not None and self._cap - now < budget:
            budget, reason = self._cap - now, DRAIN
        ahead = sum(len(q) for q in self.queues[:rank + 1])
        if self.expected_wait(ahead) > budget:
            return reason
        if self.waiting >= self.queue_size and not self._displace(rank):
            return QUEUE_FULL
        deadline = now + self.max_wait[rank]  # CoDel, not the deadline, sheds it sooner
        waiter = Waiter(rank, now, deadline if self._cap is None else min(deadline, self._cap))
        self.queues[rank][waiter] = None
        self.waiting += 1
        self._dispatch(now)  # a limit that just grew may have room for it at once
        return waiter

    def expected_wait(self, ahead: int) -> float:
        """Seconds until a permit for whoever stands behind `ahead` waiters."""
        return (ahead + 1) * self.rtt / max(1, self.limiter.limit)

    def retry_after(self, rank: int) -> int:
        """Whole seconds (at least 1) for a shed request's Retry-After."""
        ahead = sum(len(q) for q in self.queues[:rank + 1])
        return max(1, math.ceil(self.expected_wait(ahead)))

    def release(self, held: float, latency: float, now: float) -> None:
        """A permit comes back after `held` seconds, `latency` of them until the upstream's
        response head arrived: what the limit follows (a slow client reading a long body
        holds the permit, but says nothing about the upstream)."""
        self.limiter.sample(latency, self.inflight, now)
        self.rtt = held if self.rtt == 0.0 else self.rtt + RTT_WEIGHT * (held - self.rtt)
        self.inflight -= 1
        self._dispatch(now)

    def give_back(self, now: float) -> None:
        """A permit comes back unused (its waiter left just as it was granted)."""
        self.inflight -= 1
        self._dispatch(now)

    def leave(self, waiter: Waiter) -> bool:
        """The waiter's client went away; False if it was settled already."""
        if waiter.outcome is not None:
            return False
        del self.queues[waiter.rank][waiter]
        self.waiting -= 1
        waiter.outcome = "left"
        return True

    def tick(self, now: float) -> None:
        """Shed waiters past their deadline, apply CoDel, and grant what the limit allows."""
        for queue in self.queues:
            while queue:
                head = next(iter(queue))
                if head.deadline > now:
                    break
                self._shed(head, DRAIN if self._cap is not None else MAX_WAIT)
        self._codel(now)
        self._dispatch(now)

    def drain(self, until: float, now: float) -> None:
        """Draining: every waiter is answered by `until` (served or shed), arrivals too."""
        self._cap = until
        for queue in self.queues:
            for waiter in queue:
                waiter.deadline = min(waiter.deadline, until)
        self.tick(now)

    def next_wakeup(self) -> float | None:
        """When `tick` next has something to do, or None while nobody waits."""
        heads = [next(iter(q)) for q in self.queues if q]
        if not heads:
            return None
        when = min(h.deadline for h in heads)
        target = self.settings.target_delay
        if self._above_since is not None and not self.standing:
            when = min(when, self._above_since + self.settings.interval)
        else:  # the next moment a waiter grows older than the target
            when = min(when, min(h.enqueued for h in heads) + target)
        return when

    def depths(self) -> tuple[int, ...]:
        return tuple(len(q) for q in self.queues)

    # ------------------------------------------------------------------ inside
    def _dispatch(self, now: float) -> None:
        while self.waiting and self.inflight < self.limiter.limit:
            queue = next(q for q in self.queues if q)
            waiter, _ = queue.popitem(last=False)
            self.waiting -= 1
            self.inflight += 1
            waiter.outcome = GRANTED
            self.settled.append(waiter)
        if not self.waiting:
            self.standing, self._above_since = False, None

    def _shed(self, waiter: Waiter, reason: str) -> None:
        del self.queues[waiter.rank][waiter]
        self.waiting -= 1
        waiter.outcome = reason
        self.settled.append(waiter)

    def _displace(self, rank: int) -> bool:
        """Make room for a class-`rank` arrival: shed the newest waiter of the lowest class
        below it. False when every waiter is of its class or higher."""
        for queue in reversed(self.queues[rank + 1:]):
            if queue:
                self._shed(next(reversed(queue)), QUEUE_FULL)
                return True
        return False

    def _codel(self, now: float) -> None:
        heads = [next(iter(q)) for q in self.queues if q]
        if not heads:
            self.standing, self._above_since = False, None
            return
        target = self.settings.target_delay
        if now - min(h.enqueued for h in heads) <= target:
            self._above_since = None
        elif self._above_since is None:
            self._above_since = now
        elif now - self._above_since >= self.settings.interval:
            self.standing = True
        if not self.standing:
            return
        for queue in reversed(self.queues[1:]):  # never critical: see the module's text
            # FIFO: the old ones are at the front, so this stops at the first young one.
            old = list(takewhile(lambda w: now - w.enqueued > target, queue))
            if old:
                for waiter in old:
                    self._shed(waiter, CODEL)
                return
