"""Recording off the request path: a request appends to a bounded queue; a task sends the
queue to the store at least once a second.

A request does no I/O for an experiment: an exposure or an event is one append, a
guardrail observation a few additions to the process's per-variant sums. Past QUEUE_MAX
waiting records new ones are dropped and counted (`gateway_experiment_dropped_total`), so a
Redis that stops answering costs memory up to that bound and nothing else; a batch the
store refuses is dropped and counted the same way.

Events wait EVENT_DELAY before they are sent: the exposure of their unit may have been taken
by another worker or sidecar that has not flushed yet (each flushes every FLUSH_EVERY), and
an event that reached the store first would be counted as one of a unit never exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from gateway import metrics
from gateway.experiments.report import latency_bucket
from gateway.experiments.store import (
    Event,
    ExperimentStore,
    Exposure,
    Guardrail,
    Record,
)
from gateway.redisconn import RedisUnavailable

log = logging.getLogger("gateway.experiments")

QUEUE_MAX = 100_000
FLUSH_EVERY = 0.25  # seconds
BATCH_MAX = 2_000  # records per script call
EVENT_DELAY = 1.0  # seconds an event waits for its unit's exposure to be flushed elsewhere


class _Sums:
    __slots__ = ("errors", "histogram", "latency_squares", "latency_sum", "requests")

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.latency_sum = self.latency_squares = 0.0
        self.histogram: dict[int, int] = {}  # bucket -> count, only buckets that were hit


class Recorder:
    """One per process; outlives reloads (the experiments' metric lists are updated)."""

    def __init__(self, store: ExperimentStore, flush_every: float = FLUSH_EVERY,
                 queue_max: int = QUEUE_MAX, event_delay: float = EVENT_DELAY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.flush_every = flush_every
        self.queue_max = queue_max
        self.metrics: Mapping[str, Sequence[str]] = {}  # experiment -> metric names
        self.event_delay = event_delay
        self._clock = clock
        # Exposures as plain (experiment, variant, unit): the request path makes no record.
        self._exposures: list[tuple[str, str, str]] = []
        self._events: deque[tuple[float, str, Event]] = deque()
        self._sums: dict[tuple[str, str], _Sums] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.after_flush: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ request path
    def _full(self) -> bool:
        if len(self._exposures) + len(self._events) >= self.queue_max:
            metrics.EXPERIMENT_DROPPED.inc()
            return True
        return False

    def expose(self, experiment: str, variant: str, unit: str) -> None:
        if len(self._exposures) + len(self._events) < self.queue_max:
            self._exposures.append((experiment, variant, unit))
        else:
            metrics.EXPERIMENT_DROPPED.inc()

    def event(self, experiment: str, metric: str, unit: str, value: float,
              event_id: str | None = None) -> None:
        if not self._full():
            self._events.append((self._clock(), experiment,
                                 Event(metric, unit, value, event_id)))

    def observe(self, experiment: str, variant: str, error: bool,
                upstream_seconds: float | None) -> None:
        sums = self._sums.get((experiment, variant))
        if sums is None:
            sums = self._sums[(experiment, variant)] = _Sums()
        sums.requests += 1
        sums.errors += error
        if upstream_seconds is not None:
            sums.latency_sum += upstream_seconds
            sums.latency_squares += upstream_seconds * upstream_seconds
            bucket = latency_bucket(upstream_seconds)
            sums.histogram[bucket] = sums.histogram.get(bucket, 0) + 1

    # ------------------------------------------------------------------ off the path
    async def flush(self, everything: bool = False) -> None:
        """Send what is due (`everything`: events not yet due too); a batch the store
        refuses is dropped and counted."""
        async with self._lock:
            exposures, self._exposures = self._exposures, []
            queue: list[tuple[str, Record]] = [(e, Exposure(v, u)) for e, v, u in exposures]
            due = self._clock() - self.event_delay
            events = self._events
            while events and (everything or events[0][0] <= due):
                _, experiment, event = events.popleft()
                queue.append((experiment, event))
            sums, self._sums = self._sums, {}
            for (experiment, variant), s in sums.items():
                queue.append((experiment, Guardrail(variant, s.requests, s.errors,
                                                    s.latency_sum, s.latency_squares,
                                                    tuple(s.histogram.items()))))
            by_experiment: dict[str, list[Record]] = {}
            for experiment, record in queue:
                by_experiment.setdefault(experiment, []).append(record)
            for experiment, records in by_experiment.items():
                names = self.metrics.get(experiment)
                if names is None:  # removed by a reload meanwhile
                    metrics.EXPERIMENT_DROPPED.inc(len(records))
                    continue
                for start in range(0, len(records), BATCH_MAX):
                    batch = records[start:start + BATCH_MAX]
                    try:
                        await self.store.apply(experiment, names, batch)
                    except (RedisUnavailable, OSError) as exc:
                        metrics.EXPERIMENT_DROPPED.inc(len(batch))
                        log.warning("experiment %s: %d records dropped: %s", experiment,
                                    len(batch), exc)
        for callback in self.after_flush:
            callback()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the loop must outlive any one batch
                log.exception("experiment recording failed; records of this batch dropped")

    async def close(self) -> None:
        await stop(self._task)
        self._task = None
        await self.flush(everything=True)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a background loop and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
