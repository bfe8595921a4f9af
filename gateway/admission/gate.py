"""Admission in the running gateway: a `Gate` per upstream drives its `Controller` on the
event loop (futures for waiters, one timer for deadlines and CoDel) and keeps its metrics.

A request takes a permit just before its upstream exchange (`admitted`), so cache hits and
rate-limit refusals never wait, and a queued request holds no upstream connection: the
pool is asked only once the permit is granted. The permit comes back when the exchange
ends: at once for a body that arrived whole with the head, else when the relay releases
the exchange (body sent, failed, or the client gone: aiohttp cancels the handler and the
relay's `finally` releases it). A permit dropped without release (an exchange abandoned
on an error path) is given back when it is garbage-collected, so the limit never leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.admission.control import GRANTED, REASONS, Controller, Waiter
from gateway.admission.limit import GradientLimit
from gateway.admission.share import Lease, Ledger
from gateway.config.model import PRIORITIES, Admission, Priority, Upstream
from gateway.metrictally import TALLY
from gateway.problem import problem
from gateway.proxy import Exchange, Outgoing
from gateway.wire.h1client import UpstreamError

# RFC 9457 §3.1.1: a type URI that is not meant to be dereferenced; tag: as it suggests.
OVERLOADED = "tag:sidecar-gateway,2026:overloaded"
DRAIN_SHARE = 0.5  # of drain_timeout that queued requests may still wait on SIGTERM
# How often a worker that lends permits looks at the ledger without an event of its own:
# an idle worker's spare permits reach a busy one within this (each look reads a few words
# of shared memory; 200 a second cost about 0.2% of a core).
LEND_EVERY = 0.005


class Overloaded(UpstreamError):
    """Shed: answered 503 with Retry-After. An UpstreamError, so a cached route may still
    answer from a stale entry (stale-if-error) as it would for the upstream's own 503."""

    def __init__(self, upstream: str, priority: str, reason: str, retry_after: int) -> None:
        super().__init__(503, f"upstream {upstream!r} is at its limit; this {priority} "
                         f"request was shed ({reason.replace('_', ' ')})")
        self.priority, self.reason, self.retry_after = priority, reason, retry_after

    def response(self, request_id: str) -> web.Response:
        return problem(503, self.detail, request_id, type_=OVERLOADED, title="Overloaded",
                       headers={"Retry-After": str(self.retry_after)},
                       priority=self.priority, reason=self.reason)


class Permit:
    """One request's right to an upstream exchange; released once."""

    __slots__ = ("done", "gate", "granted", "latency")

    def __init__(self, gate: Gate, granted: float) -> None:
        self.gate, self.granted, self.done = gate, granted, False
        self.latency: float | None = None  # until the response head arrived

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.gate.release(self)

    def __del__(self) -> None:
        # The safety net for an exchange dropped unreleased; at interpreter exit the loop
        # may be gone, and nothing is left to give the permit to.
        with contextlib.suppress(Exception):
            self.release()


class Gate:
    """One upstream's admission in this process."""

    def __init__(self, upstream: str, settings: Admission, workers: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 ledger: Ledger | None = None) -> None:
        self.upstream = upstream
        self.workers = workers
        self.control = Controller(settings, workers)
        self.clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._publishing = False
        self.ledger = ledger
        self.lease: Lease | None = None
        self._lending: asyncio.TimerHandle | None = None
        self.lend(settings)
        # Children at load (STYLE): the request path only looks them up in tuples.
        self._inflight = metrics.ADMISSION_INFLIGHT.labels(upstream)
        self._limit = metrics.ADMISSION_LIMIT.labels(upstream)
        self._saturation = metrics.UPSTREAM_SATURATION.labels(upstream)
        self._depth = tuple(metrics.ADMISSION_QUEUE_DEPTH.labels(upstream, p)
                            for p in PRIORITIES)
        self._wait = tuple(metrics.ADMISSION_WAIT.labels(upstream, p) for p in PRIORITIES)
        self._shed_wait = tuple(metrics.ADMISSION_SHED_WAIT.labels(upstream, p)
                                for p in PRIORITIES)
        self._shed = {(rank, reason): metrics.ADMISSION_SHED.labels(upstream, p, reason)
                      for rank, p in enumerate(PRIORITIES) for reason in REASONS}
        self.publish()

    # ------------------------------------------------------------------ requests
    async def enter(self, rank: int) -> Permit:
        """A permit, after queueing if need be; Overloaded when shed."""
        control = self.control
        arrived = self.clock()
        verdict = control.arrive(rank, arrived)
        if verdict is None:
            self._changed()
            TALLY.observe(self._wait[rank], 0.0)
            return Permit(self, arrived)
        if isinstance(verdict, str):
            self._settle()
            raise self._refusal(rank, verdict)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        verdict.token = future
        self._settle()
        try:
            outcome = await future
        except asyncio.CancelledError:  # the client went away: out of the queue at once
            self._leave(verdict)
            raise
        if outcome != GRANTED:  # counted when it was settled
            raise Overloaded(self.upstream, PRIORITIES[rank], outcome,
                             self.control.retry_after(rank, self.clock()))
        # Held from the grant, not from this task's turn on the loop: the time between is
        # part of what a permit costs the upstream's throughput.
        TALLY.observe(self._wait[rank], verdict.granted - arrived)
        return Permit(self, verdict.granted)

    def release(self, permit: Permit) -> None:
        now = self.clock()
        held = now - permit.granted
        self.control.release(held, held if permit.latency is None else permit.latency, now)
        self._settle()

    def _leave(self, waiter: Waiter) -> None:
        if not self.control.leave(waiter) and waiter.outcome == GRANTED:
            self.control.give_back(self.clock())  # granted as the client left: unused
        self._settle()

    # ------------------------------------------------------------------ lending
    def lend(self, settings: Admission) -> None:
        """With several workers and a fixed limit: take this worker's lease of it (see
        gateway/admission/share.py). An adaptive limit stays split: each worker's
        follows the latency its own requests see."""
        self.retire()
        if self.ledger is None or self.workers < 2 or settings.max_concurrency is None:
            return
        self.lease = self.ledger.lease(self.upstream, settings.max_concurrency)
        self.control.resize(self.lease.quota, self.clock())
        with contextlib.suppress(RuntimeError):  # no loop: a script or a unit test
            self._lending = asyncio.get_running_loop().call_later(LEND_EVERY, self._look)

    def retire(self) -> None:
        """No longer configured: out of the ledger (its permits out are no longer counted
        there while they finish)."""
        if self.lease is not None:
            self.lease.close()
            self.lease = None
        if self._lending is not None:
            self._lending.cancel()
            self._lending = None

    def _look(self) -> None:
        if self.lease is None:
            self._lending = None
            return
        self._balance()  # also when nothing is spare: what waits here is published
        self._settle()
        self._lending = asyncio.get_running_loop().call_later(LEND_EVERY, self._look)

    def _balance(self) -> None:
        """Borrow for waiters, lend what is spare, give back a loan a worker below its
        share asks for; the limit here is this worker's quota."""
        lease, control = self.lease, self.control
        assert lease is not None
        limit, waiting, inflight = control.limit, control.waiting, control.inflight
        lease.wanting(waiting)
        anyone, short = lease.peers_waiting()
        if waiting and limit > lease.base and short:
            limit = lease.base  # as permits return they go back, not to waiters here
        elif waiting:
            limit += lease.borrow(waiting)
        elif anyone:
            limit = inflight  # nobody waits here: what is not out goes to who waits
        keep = max(limit, inflight)
        if keep < lease.quota:
            lease.give(lease.quota - keep)
        if limit != control.limit:
            control.resize(limit, self.clock())

    def _refusal(self, rank: int, reason: str) -> Overloaded:
        TALLY.inc(self._shed[rank, reason])
        TALLY.observe(self._shed_wait[rank], 0.0)
        return Overloaded(self.upstream, PRIORITIES[rank], reason,
                          self.control.retry_after(rank, self.clock()))

    # ------------------------------------------------------------------ the loop's side
    def _settle(self) -> None:
        """Wake every waiter the controller settled, re-arm the timer, publish."""
        if self.lease is not None and (self.control.waiting or
                                        self.control.inflight < self.control.limit):
            self._balance()
        settled = self.control.settled
        if settled:
            self.control.settled = []
            now = self.clock()
            for waiter in settled:
                future = waiter.token
                if isinstance(future, asyncio.Future) and not future.done():
                    future.set_result(waiter.outcome or GRANTED)
                if waiter.outcome != GRANTED:
                    TALLY.inc(self._shed[waiter.rank, waiter.outcome or ""])
                    TALLY.observe(self._shed_wait[waiter.rank], now - waiter.enqueued)
        self._arm()
        self._changed()

    def _arm(self) -> None:
        when = self.control.next_wakeup()
        if when is None:
            return  # a timer still set fires once and finds nothing to do
        if self._timer is not None:
            if self._timer_at <= when:
                return  # fires earlier; its tick arms the next one
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = when
        # The controller's clock is monotonic, as the loop's is, but not necessarily
        # the same one: convert through the distance from now.
        self._timer = loop.call_at(loop.time() + max(0.0, when - self.clock()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.control.tick(self.clock())
        self._settle()

    def drain(self, seconds: float) -> None:
        """SIGTERM: every queued request is answered (served or 503) within `seconds`."""
        now = self.clock()
        self.control.drain(now + seconds, now)
        self._settle()

    # ------------------------------------------------------------------ metrics
    def _changed(self) -> None:
        if not self._publishing:
            self._publishing = True
            try:
                asyncio.get_running_loop().call_soon(self.publish)
            except RuntimeError:  # no loop: a script or a unit test
                self.publish()

    def publish(self) -> None:
        """The gauges, once per loop turn that changed them (each set takes a lock, and
        in multiprocess mode writes a file)."""
        self._publishing = False
        control = self.control
        limit = control.limit
        self._inflight.set(control.inflight)
        # With lending, this worker's share: the shares sum to the instance's limit,
        # where quotas move from worker to worker.
        self._limit.set(limit if self.lease is None else self.lease.base)
        self._saturation.set(control.inflight / limit if limit else 0.0)
        for gauge, depth in zip(self._depth, control.depths(), strict=True):
            gauge.set(depth)

    def report(self) -> dict[str, Any]:
        control = self.control
        limiter = control.limiter
        report: dict[str, Any] = {
            "mode": "static",
            "limit": control.limit if self.lease is None else self.lease.base,
            "in_flight": control.inflight,
            "queue": dict(zip(map(str, PRIORITIES), control.depths(), strict=True)),
            "queue_size": control.queue_size,
            "standing_queue": control.standing,
            "mean_held_seconds": round(control.rtt, 6),
        }
        if self.lease is not None:
            report["quota"] = control.limit  # the share plus what is borrowed, less lent
        if isinstance(limiter, GradientLimit):
            report.update(mode="adaptive", min=limiter.low, max=limiter.high,
                          floor_seconds=round(limiter.floor, 6)
                          if limiter.floor != float("inf") else None)
        return report


async def admitted(gate: Gate, rank: int, fetch: Callable[[Outgoing], Awaitable[Exchange]],
                   out: Outgoing) -> Exchange:
    """`fetch(out)` once `gate` grants a permit; the permit lives as long as the exchange."""
    permit = await gate.enter(rank)
    # The upstream's latency from here, not from the grant: the time a granted waiter
    # spends waiting for its turn on this loop is the gateway's, and an adaptive limit that
    # read it as the upstream's would shrink whenever the host is busy.
    sent = gate.clock()
    try:
        exchange = await fetch(out)
    except BaseException:
        permit.release()
        raise
    permit.latency = gate.clock() - sent
    if isinstance(exchange.body, bytes):
        permit.release()  # the upstream is done with it: the body came whole with the head
        return exchange
    release = exchange.release

    def release_both() -> None:
        release()
        permit.release()

    exchange.release = release_both
    return exchange


class Gates:
    """Every upstream's gate in this process. Outlives reloads, so permits out and waiters
    queued keep counting against the same limit when the config changes."""

    def __init__(self, workers: int = 1, ledger: Ledger | None = None) -> None:
        self.workers = workers
        self.ledger = ledger
        self.by_upstream: dict[str, Gate] = {}

    def adopt(self, upstreams: Mapping[str, Upstream]) -> dict[str, Gate]:
        """The gates for this upstream set (a copy for the Runtime to read)."""
        gates: dict[str, Gate] = {}
        for name, up in upstreams.items():
            if up.admission is None:
                continue
            gate = self.by_upstream.get(name)
            if gate is None:
                gate = Gate(name, up.admission, self.workers, ledger=self.ledger)
            else:
                before = gate.control.settings.max_concurrency
                gate.control.configure(up.admission, self.workers, gate.clock())
                if up.admission.max_concurrency != before:
                    gate.lend(up.admission)
                gate.publish()
            gates[name] = gate
        # A gate no longer configured lives on while permits out refer to it, but leaves
        # the ledger: a gate configured again later takes the same slot afresh.
        for name, gate in self.by_upstream.items():
            if name not in gates:
                gate.retire()
        self.by_upstream = gates
        return dict(gates)

    def drain(self, drain_timeout: float) -> None:
        for gate in self.by_upstream.values():
            gate.drain(drain_timeout * DRAIN_SHARE)

    def report(self) -> dict[str, Any]:
        return {"workers": self.workers,
                "upstreams": {name: gate.report() for name, gate in self.by_upstream.items()}}


RANKS = {priority: rank for rank, priority in enumerate(PRIORITIES)}


def rank_of(priority: Priority, tier: str | None, by_tier: Mapping[str, int]) -> int:
    """The class a request waits in: its route's, moved up (+) or down (-) by its tier."""
    move = by_tier.get(tier, 0) if tier is not None else 0
    return min(len(PRIORITIES) - 1, max(0, RANKS[priority] - move))


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The instance's view from every worker's: limits, in flight and depths summed."""
    merged: dict[str, Any] = {"workers": len(reports), "upstreams": {}}
    for report in reports:
        for name, one in report.get("upstreams", {}).items():
            into = merged["upstreams"].setdefault(name, {
                "mode": one["mode"], "limit": 0, "in_flight": 0,
                "queue": dict.fromkeys(map(str, PRIORITIES), 0), "queue_size": 0,
                "standing_queue": False, "per_worker": []})
            into["limit"] += one["limit"]
            into["in_flight"] += one["in_flight"]
            into["queue_size"] += one["queue_size"]
            into["standing_queue"] = into["standing_queue"] or one["standing_queue"]
            for priority, depth in one["queue"].items():
                into["queue"][priority] = into["queue"].get(priority, 0) + depth
            into["per_worker"].append(one)
    return merged
