"""Per-request metric updates gathered in plain Python and applied at most once a second,
and whenever /metrics is read.

prometheus-client takes a lock and, for a histogram, walks the buckets on every `inc` and
`observe`; the proxy path made five such calls per request, which measured ~9 us of CPU per
request in the running gateway (tests/perf/bench_proxy.py). Here a request only bumps a
dict entry and appends its durations to a list. Applying them once per event-loop turn
still cost ~15k instructions per request where a turn finishes one request (callgrind,
tests/perf/bench_cpu.py --parts: a scheduled callback, a gauge, a counter and two
histogram observations, each a locked call), so the figures are applied by a timer at most
FLUSH_EVERY seconds after the first update, and by `apply_all` before /metrics is rendered.
A scrape therefore sees every request answered before it: /metrics is exact when read.

The same works in multiprocess mode: each worker writes its own values to the files that
/metrics sums (the in-flight gauge is `livesum`, set from this process's count), and the
supervisor asks every worker to apply its figures before it reads them
(gateway/supervisor.py). A worker applies what it holds when it stops.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any

from gateway import metrics
from gateway.wire.prometheus import inc_value, observe_many, set_value

FLUSH_EVERY = 1.0  # seconds at most between an update and its application


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
        # Counter groups noted one per decision by whoever decides one (the limiter, the
        # flags' generated code: `noted.append`, the list's own C method, no Python frame;
        # one note however many counters a group holds), for a request between `started`
        # and `finished` (whose own update sees that the flush is due), so at most a flush
        # interval's worth; counted when applied. The same list for the process's life,
        # emptied in place.
        self.noted: list[CounterGroup] = []
        self.sums: dict[Any, int] = {}  # counter child -> amount
        # The loop a flush is timed on; None when none is. A loop that closed with one
        # pending (tests run one loop each) is simply replaced by the next one.
        self._queued_on: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

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
        """`child.observe(amount)`, applied within FLUSH_EVERY."""
        amounts = self._durations.get(child)
        if amounts is None:
            amounts = self._durations[child] = []
        amounts.append(amount)
        self._schedule()

    def inc(self, child: Any) -> None:
        """`child.inc()`, applied within FLUSH_EVERY (a cache lookup, for instance)."""
        counts = self._counts
        counts[child] = counts.get(child, 0) + 1
        self._schedule()

    def add(self, child: Any, amount: int) -> None:
        """`child.inc(amount)` within FLUSH_EVERY. A caller on the request path may update
        `sums` itself, as deciders do `noted`: the request's own `finished` schedules the
        flush."""
        sums = self.sums
        sums[child] = sums.get(child, 0) + amount
        self._schedule()

    def _schedule(self) -> None:
        queued = self._queued_on
        if queued is not None and not queued.is_closed():
            return  # a flush is already timed (the usual case: no lookup)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the gateway's loop (a script, a unit test)
            self.flush()
            return
        self._queued_on = loop
        self._timer = loop.call_later(FLUSH_EVERY, self.flush)

    def apply_all(self) -> None:
        """Everything gathered so far: before /metrics is read, and when the process stops."""
        self.flush()

    def flush(self) -> None:
        self._queued_on = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()  # applied now: the next update times the next flush
        # Straight to the value holders (gateway/wire/prometheus.py): the public
        # set()/inc() only add argument and exemplar checks around the same call.
        set_value(metrics.INFLIGHT, float(self.inflight))
        requests, self._requests = self._requests, {}
        for key, n in requests.items():
            inc_value(metrics.REQUESTS_BY(*key), n)
        counts, self._counts = self._counts, {}
        sums, noted = self.sums, self.noted
        if noted:
            # Counted in C; groups share counters: one `inc` per counter.
            for group, n in Counter(noted).items():
                for child in group.children:
                    counts[child] = counts.get(child, 0) + n
            noted.clear()
        for child, n in sums.items():
            counts[child] = counts.get(child, 0) + n
        sums.clear()
        for child, n in counts.items():
            inc_value(child, n)
        durations, self._durations = self._durations, {}
        for child, amounts in durations.items():
            observe_many(child, amounts)


TALLY = Tally()
