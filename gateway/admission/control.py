"""Admission for one upstream: a limit on requests in flight and a priority queue before it.

Pure: every call is given the time, and waiters are plain records; the asyncio driver
(`gateway.admission.gate`) turns them into futures. A call may settle waiters (grant them a
permit, or shed them); it appends them to `settled` for the driver to wake.

The queue has one FIFO per class, and a higher class always leaves first. A request is
refused at once rather than left to time out when:

- its expected wait (`expected_wait`, below) is longer than its class's `max_wait`, or,
  while the queue is standing (below), longer than `target_delay`: the answer then costs
  the client nothing but a round trip, where a timeout would have cost it the whole
  `max_wait`;
- the queue is full (`queue_size`) and no waiter of a lower class can make room: an
  arrival displaces the newest waiter of the lowest class below its own.

A waiter still queued at its class's `max_wait` is shed then (later arrivals of higher
classes can push it back past its estimate).

The expected wait is the time until as many permits have come back as there are waiters
ahead, plus the higher-class requests that will arrive meanwhile and pass it. When permits
come back is known from when each was granted and the mean time one is held: an upstream of
steady latency returns them in the order and at the rhythm they went out, often in cohorts
(a burst granted together comes back together), which a rate alone (limit / mean held) reads
as an even stream. The estimate takes the later of the two, so it holds for an upstream of
steady latency (where the schedule is exact) and of scattered latency (where the rate is).
Measured with tests/perf/sim_admission.py (the controller driven through the target
scenario on a virtual clock): with the rate alone and no allowance for classes passing,
a fifth of the bulk sheds came after 20 ms in the queue (CoDel's, of waiters the estimate
had let in), none of them an artefact of a busy loop.

Against standing queues, CoDel (Nichols and Jacobson, "Controlling Queue Delay", 2012) as
Facebook applied it to request queues ("Fail at Scale", 2015): when the oldest waiter has
been older than `target_delay` for a whole `interval`, the queue is standing; from then
until it next empties, waiters of the lowest class older than `target_delay` are shed,
oldest first, and an arrival that no lower-class waiter stands behind may expect at most
`target_delay`. Leaving that state only when the queue empties (not when it dips below
the target) keeps it from oscillating under steady overload, where the short waits it
enforces would otherwise end it at once; and arrivals stay held to the target after
that for as long as the target keeps refusing some (`_stand_down`), since under steady
overload the queue also empties now and then.

Critical requests are exempt from CoDel: they pass every other class anyway, and their
`max_wait` and the estimate at arrival bound their queue. Measured on a busy host, a CoDel
that also shed them shed critical requests for the gateway's own scheduling delays
(tests/perf/bench_admission.py: 259 of 951 in one run) while bulk work was waiting.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
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
# Seconds over which arrival rates per class are averaged (exponential decay): long enough
# to hold several of the rarer class's arrivals at the rates shedding matters at, short
# enough to follow a change of mix within a few seconds.
RATE_HORIZON = 1.0
# Retry-After when higher classes arrive faster than permits come back (no wait would end),
# as a rate limit that never refills answers (gateway/ratelimit/headers.py).
RETRY_AFTER_MAX = 60


@dataclass(slots=True, eq=False)
class Waiter:
    """One queued request; `outcome` is GRANTED or a shed reason once settled."""

    rank: int  # index in PRIORITIES: 0 is critical
    enqueued: float
    deadline: float
    outcome: str | None = None
    granted: float = 0.0  # when it was granted its permit
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
        self.spread = 0.0  # mean distance of a permit's time held from that mean
        self.settled: list[Waiter] = []
        self.standing = False  # CoDel's dropping state
        self.held_until = -math.inf  # arrivals are held to the target until then
        self._above_since: float | None = None
        self._cap: float | None = None  # draining: nobody waits past this
        self.max_wait = tuple(settings.max_wait[p] for p in PRIORITIES)
        # When each permit out was granted, ascending: when they come back.
        self.granted: list[float] = []
        self._arrivals = [0.0] * len(PRIORITIES)  # decayed arrival counts per class
        self._counted = 0.0  # when they were last decayed

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

    def resize(self, limit: int, now: float) -> None:
        """A fixed limit moves (permits lent between workers): grant what it allows."""
        assert isinstance(self.limiter, StaticLimit)
        self.limiter.limit = limit
        self._dispatch(now)

    # ------------------------------------------------------------------ requests
    def arrive(self, rank: int, now: float) -> Waiter | str | None:
        """None: admitted, holding a permit. A Waiter: queued. A string: shed, and why."""
        if self.inflight < self.limiter.limit and not self.waiting:
            self.inflight += 1
            self.granted.append(now)
            return None
        self.limiter.saturated = True
        self._count_arrival(rank, now)
        self._codel(now)
        budget, reason = self.max_wait[rank], MAX_WAIT
        if (self.standing or now < self.held_until) and rank and \
                not any(self.queues[rank + 1:]):
            # Only an arrival that would stand last is held to the target: one that goes
            # before waiters of a lower class keeps its own max_wait, and CoDel sheds
            # those lower waiters instead (lower classes are shed first). The head of
            # the queue stays open, however slow the upstream.
            held = max(self.settings.target_delay, self.expected_wait(0, 0, now))
            if held < budget:
                budget, reason = held, CODEL
        if self._cap is not None and self._cap - now < budget:
            budget, reason = self._cap - now, DRAIN
        ahead = sum(len(q) for q in self.queues[:rank + 1])
        if self.expected_wait(ahead, rank, now) > budget:
            if reason == CODEL:  # the overload goes on: keep holding arrivals
                self.held_until = now + self.settings.interval
            return reason
        if self.waiting >= self.queue_size and not self._displace(rank):
            return QUEUE_FULL
        deadline = now + self.max_wait[rank]  # CoDel, not the deadline, sheds it sooner
        waiter = Waiter(rank, now, deadline if self._cap is None else min(deadline, self._cap))
        self.queues[rank][waiter] = None
        self.waiting += 1
        self._dispatch(now)  # a limit that just grew may have room for it at once
        return waiter

    def expected_wait(self, ahead: int, rank: int = 0, now: float | None = None) -> float:
        """Seconds until a permit for a class-`rank` request behind `ahead` waiters: the
        later of the permits' rate and their schedule (see the module's text), with room
        for the higher-class arrivals that will pass it meanwhile."""
        if self.rtt == 0.0:
            return 0.0  # nothing came back yet: no evidence to refuse on
        every = self.rtt / max(1, self.limiter.limit)  # seconds between permits, by rate
        passing = self._arrival_rate(rank, now) if rank else 0.0
        left = 1.0 - passing * every  # the share of permits the classes above leave over
        if left <= 0.0:
            return math.inf
        wait = (ahead + 1) * every / left
        if now is None or not self.granted:
            return wait
        scheduled = self._scheduled(ahead, now)
        scheduled = self._scheduled(ahead + int(passing * max(wait, scheduled)), now)
        return max(wait, scheduled)

    def _scheduled(self, ahead: int, now: float) -> float:
        """Seconds until the (ahead + 1)-th permit to come back does, if each comes back
        the mean time after it was granted (one overdue: any moment now)."""
        limit = max(1, self.limiter.limit)
        # The first permits back go to nobody while more are out than the limit allows.
        index = ahead + max(0, self.inflight - limit)
        slots = max(limit, len(self.granted))
        turn, index = divmod(index, slots)
        free = slots - len(self.granted)  # permits the limit has and nobody holds
        # Half the permits of an upstream of scattered latency come back after the mean:
        # a waiter let in on the mean is as likely as not to wait past the target and be
        # shed from the queue after all (in the simulation at +-30% latency, 4% of bulk
        # sheds; with the spread added, 0.9%, and the upstream as busy).
        back = now if index < free else \
            max(now, self.granted[index - free] + self.rtt + self.spread)
        return back + turn * self.rtt - now

    def _count_arrival(self, rank: int, now: float) -> None:
        decay = math.exp(-(now - self._counted) / RATE_HORIZON) if now > self._counted else 1.0
        self._counted = max(self._counted, now)
        counts = self._arrivals
        for r in range(len(counts)):
            counts[r] *= decay
        counts[rank] += 1.0

    def _arrival_rate(self, rank: int, now: float | None) -> float:
        """Arrivals per second of the classes above `rank` (those that pass it)."""
        decay = 1.0 if now is None or now <= self._counted else \
            math.exp(-(now - self._counted) / RATE_HORIZON)
        return sum(self._arrivals[:rank]) * decay / RATE_HORIZON

    def retry_after(self, rank: int, now: float | None = None) -> int:
        """Whole seconds (at least 1) for a shed request's Retry-After."""
        ahead = sum(len(q) for q in self.queues[:rank + 1])
        return max(1, math.ceil(min(RETRY_AFTER_MAX, self.expected_wait(ahead, rank, now))))

    def release(self, held: float, latency: float, now: float) -> None:
        """A permit comes back after `held` seconds, `latency` of them until the upstream's
        response head arrived: what the limit follows (a slow client reading a long body
        holds the permit, but says nothing about the upstream)."""
        self.limiter.sample(latency, self.inflight, now)
        if self.rtt:
            self.spread += RTT_WEIGHT * (abs(held - self.rtt) - self.spread)
        self.rtt = held if self.rtt == 0.0 else self.rtt + RTT_WEIGHT * (held - self.rtt)
        self._returned(now - held)
        self._dispatch(now)

    def give_back(self, now: float) -> None:
        """A permit comes back unused (its waiter left just as it was granted: the newest)."""
        self._returned(now)
        self._dispatch(now)

    def _returned(self, granted: float) -> None:
        """One permit fewer out: the one granted nearest `granted` (the caller's clock
        arithmetic need not reproduce the time exactly)."""
        self.inflight -= 1
        times = self.granted
        if times:
            i = bisect_left(times, granted)
            if i == len(times) or (i and granted - times[i - 1] < times[i] - granted):
                i -= 1
            del times[i]

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
        elif not self.standing:  # the next moment the oldest grows older than the target
            when = min(when, min(h.enqueued for h in heads) + target)
        else:
            # Standing: the next moment a waiter CoDel may shed grows older than the
            # target. Not a critical one, which it never sheds: a critical head past the
            # target would otherwise ask for a tick at once, every turn of the loop,
            # until it left the queue (a busy loop, measured at 17,000 wasted ticks in
            # 8 s of the target scenario in tests/perf/sim_admission.py).
            sheddable = [h.enqueued for h in heads if h.rank]
            if sheddable:
                when = min(when, min(sheddable) + target)
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
            insort(self.granted, now)  # equal to or after every time in it, but for tests
            waiter.outcome, waiter.granted = GRANTED, now
            self.settled.append(waiter)
        if not self.waiting:
            self._stand_down(now)

    def _stand_down(self, now: float) -> None:
        """The queue emptied: CoDel sheds no more queued waiters. Arrivals stay held to the
        target for an interval, and for as long as that keeps refusing some: under steady
        overload the queue empties whenever the permits that come back outnumber the
        waiters the target let in, and a queue refilled to every class's max_wait would
        stand again within target + interval, its oldest waiters then shed by CoDel after
        they had waited past the target (measured: a fifth of the bulk sheds in the
        target scenario came that late, tests/perf/sim_admission.py)."""
        if self.standing:
            self.held_until = now + self.settings.interval
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
            self._stand_down(now)
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
