"""A configuration's experiments: what the pipeline records, what the admin API reads, and
the look taken once a second that keeps status, sequential p-values, snapshots and the
guardrails' kill switch up to date.

Status (draft, running, paused, completed) starts as the file says and is changed at run
time by PATCH /admin/experiments/{name}; the change is stored with the tallies, so every
worker and sidecar picks it up at its next look (within a second). Only `running`
experiments record. A completed experiment's report is computed once more, stored, and
served as it is from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import orjson
from multidict import MultiMapping

from gateway import metrics
from gateway.config.model import Config, Experiment, ExperimentMetric, ExperimentStatus
from gateway.context import RequestContext, build_context, remember
from gateway.experiments.recorder import Recorder, Slot, stop
from gateway.experiments.report import report
from gateway.experiments.store import ExperimentStore, Tallies
from gateway.flags.engine import FlagEngine
from gateway.redisconn import RedisUnavailable
from gateway.stages import FlagResult

log = logging.getLogger("gateway.experiments")

LOOK_EVERY = 1.0  # seconds between looks
SNAPSHOT_EVERY = 60.0  # seconds between points of the lift-over-time chart

class Pending(Protocol):
    """What a request recorded by an experiment observes once it is answered: the guardrail
    sums of its (experiment, variant) pairs, and the route metrics it may count."""

    def answered(self, status: int, upstream_seconds: float | None) -> None: ...


class _Slots:
    """Several (experiment, variant) pairs: a request whose flag several experiments
    measure, or whose several flags are measured. (One pair is its Slot alone.)"""

    __slots__ = ("slots",)

    def __init__(self, slots: tuple[Slot, ...]) -> None:
        self.slots = slots

    def answered(self, status: int, upstream_seconds: float | None) -> None:
        for slot in self.slots:
            slot.answered(status, upstream_seconds)


class _Converting:
    """A request to a route that a route metric counts: its guardrails, then its events."""

    __slots__ = ("conversions", "guardrails", "recorder")

    def __init__(self, guardrails: Pending | None, recorder: Recorder,
                 conversions: tuple[tuple[Experiment, ExperimentMetric, str], ...]) -> None:
        self.guardrails, self.recorder, self.conversions = guardrails, recorder, conversions

    def answered(self, status: int, upstream_seconds: float | None) -> None:
        if self.guardrails is not None:
            self.guardrails.answered(status, upstream_seconds)
        for e, metric, unit in self.conversions:
            assert metric.statuses is not None
            low, high = metric.statuses
            if low <= status < high:
                self.recorder.event(e.name, metric.name, unit, 1.0)


# What a request whose flags split so records: per running experiment of a split flag, its
# variant's slot, the position of the unit in FlagResult.units and the flag; and its Pending.
Recording = tuple[tuple[tuple[Slot, int, str], ...], Pending | None]
RECORDINGS_MAX = 4096  # distinct splits remembered before starting afresh


class Experiments:
    def __init__(self, config: Config, recorder: Recorder, store: ExperimentStore,
                 flags: FlagEngine) -> None:
        self.config = config
        self.recorder = recorder
        self.store = store
        self.flags = flags
        self.snapshot_every = SNAPSHOT_EVERY
        self.experiments = dict(config.experiments)
        self.status = {name: e.status for name, e in self.experiments.items()}
        self.running = frozenset(n for n, st in self.status.items()
                                 if st is ExperimentStatus.RUNNING)
        self.by_flag: dict[str, tuple[str, ...]] = {}  # flag -> experiments measuring it
        for e in self.experiments.values():
            self.by_flag[e.flag] = (*self.by_flag.get(e.flag, ()), e.name)
        self.route_metrics: dict[str, tuple[tuple[Experiment, ExperimentMetric], ...]] = {}
        for e in self.experiments.values():
            for metric in e.metrics:
                if metric.route is not None:
                    self.route_metrics[metric.route] = (
                        *self.route_metrics.get(metric.route, ()), (e, metric))
        recorder.metrics = {name: tuple(m.name for m in e.metrics)
                            for name, e in self.experiments.items()}
        self._frozen: dict[str, dict[str, Any]] = {}
        self._looks: dict[str, dict[str, float]] = {}
        self._last_snapshot: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        # FlagResult.split -> what it records, while `running` stays as it is.
        self._recordings: dict[tuple[tuple[str, str, int], ...], Recording] = {}

    # ------------------------------------------------------------------ request path
    def observes(self, route: str) -> bool:
        """Whether a request on `route` may be recorded without any flag of its own (a
        metric counted on that route); a route without flags and without such a metric
        is none of the experiments' business (on_request gives None, records nothing)."""
        return route in self.route_metrics

    def on_request(self, route: str, flags: FlagResult | None, ctx: RequestContext | None,
                   headers: MultiMapping[str], peer: str) -> Pending | None:
        """Record the exposures of this request; what observes it once it is answered.

        What a split records is worked out once per split (`_recording`), so a request
        makes no object here: an exposure is an append (none for a unit this process has
        queued already), and the Pending is shared by every request of the same split."""
        pending: Pending | None = None
        if flags is not None and flags.split:
            split = flags.split
            exposures, pending = self._recordings.get(split) or self._recording(split)
            units = flags.units
            for slot, position, key in exposures:
                # The flag code hands out the units it bucketed by (list-mode plans for
                # dense prerequisite graphs do not): else read it from the context.
                unit = units[position] if position < len(units) else None
                if unit is None:
                    ctx = ctx or self._context(headers, peer)
                    unit = self.flags.bucket_value(key, ctx)
                if unit and unit not in slot.seen:  # Recorder.expose checks too; a call less
                    self.recorder.expose(slot, unit)
        metrics_here = self.route_metrics.get(route)
        if metrics_here is not None:
            return self._conversions(metrics_here, pending, ctx, headers, peer)
        return pending

    def _recording(self, split: tuple[tuple[str, str, int], ...]) -> Recording:
        exposures: list[tuple[Slot, int, str]] = []
        for key, variant, position in split:
            for name in self.by_flag.get(key, ()):
                if name in self.running:
                    exposures.append((self.recorder.slot(name, variant), position, key))
        slots = tuple(slot for slot, _, _ in exposures)
        pending: Pending | None = (None if not slots else slots[0] if len(slots) == 1
                                   else _Slots(slots))
        return remember(self._recordings, split, (tuple(exposures), pending), RECORDINGS_MAX)

    def _conversions(self, metrics_here: tuple[tuple[Experiment, ExperimentMetric], ...],
                     pending: Pending | None, ctx: RequestContext | None,
                     headers: MultiMapping[str], peer: str) -> Pending | None:
        """The route metrics this request may count once answered, added to `pending`."""
        conversions: list[tuple[Experiment, ExperimentMetric, str]] = []
        for e, metric in metrics_here:
            if e.name in self.running:
                ctx = ctx or self._context(headers, peer)
                unit = self.flags.bucket_value(e.flag, ctx)
                if unit:
                    conversions.append((e, metric, unit))
        if not conversions:
            return pending
        return _Converting(pending, self.recorder, tuple(conversions))

    def _context(self, headers: MultiMapping[str], peer: str) -> RequestContext:
        return build_context(self.config.context, peer, headers,
                             environment=self.config.environment)[0]

    # ------------------------------------------------------------------ reports
    def weights(self, experiment: Experiment) -> dict[str, int]:
        flag = self.flags.flags.get(experiment.flag) or self.config.flags[experiment.flag]
        return {v.name: v.weight for v in flag.variants}

    async def report(self, name: str, now: float | None = None, *,
                     tallies: Tallies | None = None, snapshots: bool = True
                     ) -> dict[str, Any]:
        """The report now (a completed experiment's: as stored when it ended), from
        `tallies` when the caller has just read them; without `snapshots`, the chart's
        points are left out (the look needs none, and reading up to 500 of them every second
        would be most of its work)."""
        if name in self._frozen:
            return self._frozen[name]
        experiment = self.experiments[name]
        if tallies is None:
            tallies = await self.store.read(name)
        frozen = tallies.state.get("frozen")
        if frozen:
            stored: dict[str, Any] = orjson.loads(frozen)
            self._frozen[name] = stored
            return stored
        looks = {k[len("look|"):]: float(v) for k, v in tallies.state.items()
                 if k.startswith("look|")}
        looks.update(self._looks.get(name, {}))
        found = report(experiment, self.weights(experiment), tallies, looks,
                       time.time() if now is None else now)
        new_looks = found.pop("new_looks")
        if new_looks:
            self._looks.setdefault(name, {}).update(new_looks)
            with contextlib.suppress(RedisUnavailable):
                await self.store.set_state(name, {f"look|{k}": repr(v)
                                                  for k, v in new_looks.items()})
        found["snapshots"] = await self.store.snapshots(name) if snapshots else []
        return found

    async def set_status(self, name: str, status: ExperimentStatus) -> dict[str, Any]:
        """Start, pause or complete; a completed report is frozen, and stays so."""
        tallies = await self.store.read(name)
        if tallies.state.get("status") == ExperimentStatus.COMPLETED.value:
            raise ValueError(f"experiment {name!r} is completed; its report is frozen")
        now = time.time()
        change: dict[str, str] = {"status": status.value}
        if status is ExperimentStatus.RUNNING and "started" not in tallies.state:
            change["started"] = repr(now)
        if status is ExperimentStatus.COMPLETED:
            change["ended"] = repr(now)
        await self.store.set_state(name, change)
        self._set_status(name, status)
        found = await self.report(name, now)
        if status is ExperimentStatus.COMPLETED:
            await self.store.set_state(name, {"frozen": orjson.dumps(found).decode()})
            self._frozen[name] = found
        return found

    def _set_status(self, name: str, status: ExperimentStatus) -> None:
        self.status[name] = status
        running = frozenset(n for n, st in self.status.items()
                            if st is ExperimentStatus.RUNNING)
        if running != self.running:
            self.running = running
            self._recordings = {}

    # ------------------------------------------------------------------ the look
    async def look(self, now: float) -> None:
        """Follow run-time status changes, keep sequential minima, snapshot, auto-stop."""
        for name, experiment in self.experiments.items():
            tallies = await self.store.read(name)
            stored = tallies.state.get("status")
            if stored:
                self._set_status(name, ExperimentStatus(stored))
            elif self.status[name] is ExperimentStatus.RUNNING and "started" not in \
                    tallies.state:
                started = {"status": "running", "started": repr(now)}
                await self.store.set_state(name, started)
                tallies.state.update(started)
            if self.status[name] is not ExperimentStatus.RUNNING:
                continue
            found = await self.report(name, now, tallies=tallies, snapshots=False)
            if now - self._last_snapshot.get(name, float(tallies.state.get("snapshot", 0))) \
                    >= self.snapshot_every:
                self._last_snapshot[name] = now
                await self.store.set_state(name, {"snapshot": repr(now)})
                await self.store.add_snapshot(name, _snapshot(found, now))
            if found["status"] == "guardrail_tripped" and experiment.auto_stop and \
                    "tripped" not in tallies.state:
                await self._trip(experiment, found["guardrails"], now)

    async def _trip(self, experiment: Experiment, guardrails: list[dict[str, Any]],
                    now: float) -> None:
        why = "; ".join(f"{g['metric']} moved against its goal in variant {g['variant']} "
                        f"(difference {g['difference']:.4g}, one-sided p {g['p_value']:.3g})"
                        for g in guardrails)
        await self.store.set_state(experiment.name, {"tripped": why, "tripped_at": repr(now)})
        await self.flags.set_kill_switch(experiment.flag)
        for g in guardrails:
            metrics.EXPERIMENT_GUARDRAIL_TRIPS.labels(experiment.name, g["metric"]).inc()
        log.warning("experiment %s: guardrail tripped, flag %s killed: %s", experiment.name,
                    experiment.flag, why)

    def start(self) -> None:
        if self._task is None and self.experiments:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.look(time.time())
            except RedisUnavailable as exc:
                log.warning("experiments: look skipped, Redis unavailable: %s", exc)
            except Exception:  # noqa: BLE001 - the look must outlive any one failure
                log.exception("experiments: look failed")
            await asyncio.sleep(LOOK_EVERY)

    async def close(self) -> None:
        await stop(self._task)
        self._task = None


def _snapshot(found: dict[str, Any], now: float) -> dict[str, Any]:
    """A point of the lift-over-time chart: the primary metric's lift per treatment."""
    point: dict[str, Any] = {"at": now, "units": found["units"], "lift": {}}
    for metric in found["metrics"]:
        if metric["primary"]:
            for variant, level in metric["variants"].items():
                comparison = level.get("comparison")
                if comparison is not None:
                    point["lift"][variant] = {"difference": comparison["difference"],
                                              "interval": comparison["interval"]}
    return point
