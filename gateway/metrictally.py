"""Per-request metric updates gathered in plain Python and applied once per event-loop turn.

prometheus-client takes a lock and, for a histogram, walks the buckets on every `inc` and
`observe`; the proxy path made five such calls per request, which measured ~9 us of CPU per
request in the running gateway (tests/perf/bench_proxy.py). Here a request only bumps a
dict entry and appends its durations to a list; the first update of a loop turn schedules
`flush` with `call_soon`, which applies everything gathered with one `inc` per label set and
bucket. /metrics is therefore exact from the next loop turn on: a scrape is read from a
socket, which happens after the callbacks already queued, so it never sees a request the
client has been answered for without seeing it counted.

The same works in multiprocess mode: each worker writes its own values (the in-flight gauge
is `livesum`, set from this process's count), and /metrics sums the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

from gateway import metrics
from gateway.wire.prometheus import inc_value, observe_many, set_value

GROUPS_EVERY = 1.0  # seconds between two applications of the counter groups (see below)


class CounterGroup:
    """Counter children always incremented together; hashed by identity, so cheap to count."""

    __slots__ = ("children",)

    def __init__(self, children: Iterable[Any]) -> None:
        self.children = tuple(children)


class Tally:
    """The proxy path's request metrics for the current loop turn."""

    def __init__(self) -> None:
        self.inflight = 0
        self._requests: dict[tuple[str, str, str], int] = {}
        self._durations: dict[Any, list[float]] = {}  # histogram child -> observations
        self._counts: dict[Any, int] = {}  # counter child -> increments
        # Counter group -> increments, counted by whoever decides one (the flags' generated
        # code: `groups[g] = groups.get(g, 0) + 1`, no call), for a request between
        # `started` and `finished`; the same dict for the process's life, emptied in place.
        # One update however many counters a group holds (a request's whole set of flag
        # outcomes). Groups are applied at most once per GROUPS_EVERY seconds (a timer sees
        # to it when requests stop), and whenever /metrics is rendered (`apply_all`):
        # spreading a few groups over their counters each loop turn cost ~2,500
        # instructions per request (callgrind, tests/perf/bench_flags.py's routes). In
        # multiprocess mode another worker's flag counters may lag by up to that second.
        self.groups: dict[CounterGroup, int] = {}
        self.sums: dict[Any, int] = {}  # counter child -> amount, applied with the groups
        self._groups_due = 0.0  # monotonic time the groups are next applied by a flush
        self._groups_timer: asyncio.TimerHandle | None = None
        # The loop a flush is queued on; None when none is. A loop that closed with one
        # queued (tests run one loop each) is simply replaced by the next one.
        self._queued_on: asyncio.AbstractEventLoop | None = None

    def started(self) -> None:
        self.inflight += 1
        self._schedule()

    def finished(self, route: str, method: str, status: str, duration: float) -> None:
        self.inflight -= 1
        key = (route, method, status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        self.observe(metrics.REQUEST_DURATION_BY(route), duration)

    def observe(self, child: Any, amount: float) -> None:
        """`child.observe(amount)` at the end of this loop turn."""
        amounts = self._durations.get(child)
        if amounts is None:
            amounts = self._durations[child] = []
        amounts.append(amount)
        self._schedule()

    def inc(self, child: Any) -> None:
        """`child.inc()` at the end of this loop turn (a flag evaluation, for instance)."""
        counts = self._counts
        counts[child] = counts.get(child, 0) + 1
        self._schedule()

    def add(self, child: Any, amount: int) -> None:
        """`child.inc(amount)` within GROUPS_EVERY, as the counter groups are (bytes coded:
        two counters per coded answer, each `inc` a locked call in the flush). A caller on
        the request path may update `sums` itself, as the flags do `groups`: the request's
        own `finished` schedules the flush."""
        sums = self.sums
        sums[child] = sums.get(child, 0) + amount
        self._schedule()

    def _schedule(self) -> None:
        queued = self._queued_on
        if queued is not None and not queued.is_closed():
            return  # a flush is already queued for this turn (the usual case: no lookup)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the gateway's loop (a script, a unit test)
            self.flush()
            return
        self._queued_on = loop
        loop.call_soon(self.flush)

    def _groups_timer_fired(self) -> None:
        self._groups_timer = None
        self.flush(everything=True)

    def apply_all(self) -> None:
        """Everything gathered so far, counter groups included: before /metrics is read."""
        self.flush(everything=True)

    def flush(self, everything: bool = False) -> None:
        self._queued_on = None
        # Straight to the value holders (gateway/wire/prometheus.py): the public
        # set()/inc() only add argument and exemplar checks around the same call.
        set_value(metrics.INFLIGHT, float(self.inflight))
        requests, self._requests = self._requests, {}
        for key, n in requests.items():
            inc_value(metrics.REQUESTS_BY(*key), n)
        counts, self._counts = self._counts, {}
        groups, sums = self.groups, self.sums
        if (groups or sums) and (everything or time.monotonic() >= self._groups_due):
            self._groups_due = time.monotonic() + GROUPS_EVERY
            for group, n in groups.items():  # groups share counters: one `inc` per counter
                for child in group.children:
                    counts[child] = counts.get(child, 0) + n
            groups.clear()
            for child, n in sums.items():
                counts[child] = counts.get(child, 0) + n
            sums.clear()
        elif (groups or sums) and self._groups_timer is None:
            # Held back: applied within the second even if no request comes to flush.
            with contextlib.suppress(RuntimeError):  # no loop: a script, a unit test
                self._groups_timer = asyncio.get_running_loop().call_later(
                    GROUPS_EVERY, self._groups_timer_fired)
        for child, n in counts.items():
            inc_value(child, n)
        durations, self._durations = self._durations, {}
        for child, amounts in durations.items():
            observe_many(child, amounts)


TALLY = Tally()
