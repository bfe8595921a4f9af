"""Recording off the request path: a request appends to a bounded queue; a task sends the
queue to the store at least once a second.

A request does no I/O for an experiment. Each running experiment's variant has a Slot in
the process: an exposure appends the unit to its slot's list, a guardrail observation adds
to its slot's sums, and a flush takes what the slots hold. Past QUEUE_MAX waiting records
new ones are dropped and counted (`gateway_experiment_dropped_total`), so a Redis that
stops answering costs memory up to that bound and nothing else; a batch the store refuses
is dropped and counted the same way.

A unit this process has already queued is not queued again: the store keeps only a unit's
first exposure, so a repeat would change nothing there, and a user's later requests then
cost a set lookup instead of a record (tests/perf/bench_experiments.py). The set of units
seen is per experiment, forgotten past SEEN_MAX units or SEEN_FOR seconds, and whenever a
batch of the experiment is dropped, so that every unit whose exposure may not have reached
the store is queued again at its next request; and after a store that lost its data (a
Redis restarted empty), within SEEN_FOR.

Events wait EVENT_DELAY before they are sent: the exposure of their unit may have been taken
by another worker or sidecar that has not flushed yet (each flushes every FLUSH_EVERY), and
an event that reached the store first would be counted as one of a unit never exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence

from gateway import metrics
from gateway.experiments.report import latency_bucket
from gateway.experiments.store import (
    Event,
    ExperimentStore,
    Exposures,
    Guardrail,
    Record,
)
from gateway.redisconn import RedisUnavailable

log = logging.getLogger("gateway.experiments")

QUEUE_MAX = 100_000
FLUSH_EVERY = 0.25  # seconds
BATCH_MAX = 2_000  # records (an exposed unit counts as one) per script call
EVENT_DELAY = 1.0  # seconds an event waits for its unit's exposure to be flushed elsewhere
SEEN_MAX = 65_536  # units per experiment a process remembers having queued (~6 MB)
SEEN_FOR = 600.0  # seconds before a process forgets which units it queued


class Slot:
    """One experiment's variant in this process: the units exposed to it and its guardrail
    sums since the last flush. A slot lives as long as its recorder (a flush takes what it
    holds and starts it afresh), so the request path may keep one across flushes. `seen` is
    the experiment's set of units queued, shared by its slots."""

    __slots__ = ("errors", "experiment", "histogram", "latency_squares", "latency_sum",
                 "requests", "seen", "units", "variant")

    def __init__(self, experiment: str, variant: str, seen: set[str]) -> None:
        self.experiment = experiment
        self.variant = variant
        self.seen = seen
        self.units: list[str] = []
        self.requests = self.errors = 0
        self.latency_sum = self.latency_squares = 0.0
        self.histogram: defaultdict[int, int] = defaultdict(int)  # only buckets hit

    def answered(self, status: int, upstream_seconds: float | None) -> None:
        """One of the experiment's flagged requests of this variant has been answered."""
        self.requests += 1
        if status >= 500:
            self.errors += 1
        if upstream_seconds is not None:
            self.latency_sum += upstream_seconds
            self.latency_squares += upstream_seconds * upstream_seconds
            self.histogram[latency_bucket(upstream_seconds)] += 1

    def take(self, into: list[Record]) -> None:
        """Append what the slot holds to `into` as records (units by at most BATCH_MAX), and
        start afresh."""
        if self.units:
            units, self.units = self.units, []
            for start in range(0, len(units), BATCH_MAX):
                into.append(Exposures(self.variant, units[start:start + BATCH_MAX]))
        if self.requests:
            into.append(Guardrail(self.variant, self.requests, self.errors, self.latency_sum,
                                  self.latency_squares, tuple(self.histogram.items())))
            self.requests = self.errors = 0
            self.latency_sum = self.latency_squares = 0.0
            self.histogram = defaultdict(int)


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
        self._slots: dict[tuple[str, str], Slot] = {}
        self._seen: dict[str, set[str]] = {}  # experiment -> units queued, shared by slots
        self._seen_since = clock()
        self._events: deque[tuple[float, str, Event]] = deque()
        self._waiting = 0  # exposures and events queued, against queue_max
        self._task: asyncio.Task[None] | None = None

    def slot(self, experiment: str, variant: str) -> Slot:
        found = self._slots.get((experiment, variant))
        if found is None:
            seen = self._seen.setdefault(experiment, set())
            found = self._slots[(experiment, variant)] = Slot(experiment, variant, seen)
        return found

    # ------------------------------------------------------------------ request path
    def expose(self, slot: Slot, unit: str) -> None:
        """Queue the unit's exposure to the slot's variant, unless this process has queued
        an exposure of it to the experiment already."""
        if unit in slot.seen:
            return
        if self._waiting < self.queue_max:
            self._waiting += 1
            slot.seen.add(unit)
            slot.units.append(unit)
        else:
            metrics.EXPERIMENT_DROPPED.inc()

    def event(self, experiment: str, metric: str, unit: str, value: float,
              event_id: str | None = None) -> None:
        if self._waiting < self.queue_max:
            self._waiting += 1
            self._events.append((self._clock(), experiment,
                                 Event(metric, unit, value, event_id)))
        else:
            metrics.EXPERIMENT_DROPPED.inc()

    # ------------------------------------------------------------------ off the path
    async def flush(self, everything: bool = False) -> None:
        """Send what is due (`everything`: events not yet due too); a batch the store
        refuses is dropped and counted. What a flush sends it takes at once, before its
        first wait, so flushes need no lock: two that overlap send different records."""
        now = self._clock()
        # Per experiment, its exposures before its events: an event's unit exposed in the
        # same flush is stored first.
        queue: dict[str, list[Record]] = {}
        for slot in self._slots.values():
            if slot.units or slot.requests:
                slot.take(queue.setdefault(slot.experiment, []))
        due = now - self.event_delay
        events = self._events
        while events and (everything or events[0][0] <= due):
            _, experiment, event = events.popleft()
            queue.setdefault(experiment, []).append(event)
        self._waiting = len(events)
        forget = now - self._seen_since >= SEEN_FOR
        if forget:
            self._seen_since = now
        for seen in self._seen.values():
            if forget or len(seen) > SEEN_MAX:
                seen.clear()
        for experiment, records in queue.items():
            names = self.metrics.get(experiment)
            if names is None:  # removed by a reload meanwhile
                self._dropped(experiment, records, "the experiment was removed")
                continue
            for batch in _batches(records):
                try:
                    await self.store.apply(experiment, names, batch)
                except (RedisUnavailable, OSError) as exc:
                    self._dropped(experiment, batch, str(exc))

    def _dropped(self, experiment: str, records: Sequence[Record], why: str) -> None:
        """Count records lost; their units' next requests queue their exposures again."""
        count = sum(_weight(record) for record in records)
        metrics.EXPERIMENT_DROPPED.inc(count)
        log.warning("experiment %s: %d records dropped: %s", experiment, count, why)
        self._seen.get(experiment, set()).clear()

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


def _weight(record: Record) -> int:
    return len(record.units) if isinstance(record, Exposures) else 1


def _batches(records: list[Record]) -> Iterator[list[Record]]:
    """Records in order, in batches of at most BATCH_MAX (an exposed unit counts as one;
    Slot.take cuts exposures to that size)."""
    batch: list[Record] = []
    size = 0
    for record in records:
        weight = _weight(record)
        if batch and size + weight > BATCH_MAX:
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += weight
    if batch:
        yield batch


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a background loop and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
