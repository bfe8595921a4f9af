"""The recorder's queue: each unit queued once per process, drops counted and made good, the
guardrail sums per variant; the in-process store and a virtual clock, no sockets."""

from __future__ import annotations

from collections.abc import Sequence

from gateway import metrics
from gateway.experiments import recorder as recorder_module
from gateway.experiments.recorder import Recorder
from gateway.experiments.store import Applied, LocalExperimentStore, Record
from gateway.redisconn import RedisUnavailable

METRICS = {"e": ("purchase", "errors")}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Refusing(LocalExperimentStore):
    """The in-process store, refusing batches while `down` (as an unreachable Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.batches: list[list[Record]] = []

    async def apply(self, experiment: str, metrics: Sequence[str],
                    records: Sequence[Record]) -> Applied:
        if self.down:
            raise RedisUnavailable("refused")
        self.batches.append(list(records))
        return await super().apply(experiment, metrics, records)


def dropped() -> float:
    return float(metrics.EXPERIMENT_DROPPED._value.get())


def recorder(store: LocalExperimentStore, queue_max: int = recorder_module.QUEUE_MAX,
             clock: Clock | None = None) -> Recorder:
    made = Recorder(store, queue_max=queue_max, clock=clock or Clock())
    made.metrics = METRICS
    return made


async def test_a_unit_is_queued_once_however_often_it_is_exposed() -> None:
    store = Refusing()
    rec = recorder(store)
    control, treatment = rec.slot("e", "control"), rec.slot("e", "treatment")
    for _ in range(3):
        for unit in ("u1", "u2"):
            rec.expose(control, unit)
        rec.expose(treatment, "u1")  # the same unit, another variant: already queued
    await rec.flush()
    sent = [unit for batch in store.batches for record in batch
            for unit in getattr(record, "units", ())]
    assert sent == ["u1", "u2"]
    rec.expose(control, "u1")  # after the flush too
    await rec.flush()
    assert len(store.batches) == 1
    assert (await store.read("e")).units == {"control": 2}


async def test_past_the_bound_exposures_are_dropped_counted_and_taken_again_later() -> None:
    store = Refusing()
    rec = recorder(store, queue_max=2)
    slot = rec.slot("e", "control")
    before = dropped()
    for unit in ("u1", "u2", "u3", "u4"):
        rec.expose(slot, unit)
    rec.event("e", "purchase", "u1", 1.0)
    assert dropped() == before + 3
    await rec.flush()
    rec.expose(slot, "u3")  # dropped before, so not taken as queued
    await rec.flush()
    assert (await store.read("e")).units == {"control": 3}


async def test_a_refused_batch_is_counted_and_its_units_are_queued_again() -> None:
    store = Refusing()
    rec = recorder(store)
    slot = rec.slot("e", "treatment")
    before = dropped()
    store.down = True
    rec.expose(slot, "u1")
    slot.answered(502, 0.002)
    await rec.flush()
    assert dropped() == before + 2  # the exposure and the guardrail sums
    store.down = False
    rec.expose(slot, "u1")
    await rec.flush()
    assert (await store.read("e")).units == {"treatment": 1}


async def test_guardrail_sums_are_sent_per_variant_and_start_afresh() -> None:
    store = Refusing()
    rec = recorder(store)
    control, treatment = rec.slot("e", "control"), rec.slot("e", "treatment")
    control.answered(200, 0.001)
    control.answered(503, None)
    treatment.answered(200, 0.004)
    await rec.flush()
    await rec.flush()  # nothing new: nothing sent
    assert len(store.batches) == 1
    t = await store.read("e")
    assert (t.get("g|control|n"), t.get("g|control|e"), t.get("g|treatment|n")) == (2, 1, 1)
    assert t.get("g|control|ls") == 0.001 and t.get("g|treatment|lq") == 0.004 ** 2


async def test_units_queued_are_forgotten_after_a_while() -> None:
    """So that a store that lost its data (a Redis restarted empty) learns them again."""
    clock = Clock()
    rec = recorder(Refusing(), clock=clock)
    slot = rec.slot("e", "control")
    rec.expose(slot, "u1")
    await rec.flush()
    rec.expose(slot, "u1")
    assert slot.units == []
    clock.now += recorder_module.SEEN_FOR
    await rec.flush()
    rec.expose(slot, "u1")
    assert slot.units == ["u1"]
