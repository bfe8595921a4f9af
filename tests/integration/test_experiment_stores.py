"""One suite, two stores: experiment records applied to the in-process store and to a real
redis-server running lua/experiments.lua must add up to the same tallies."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from gateway.config.model import RedisSettings
from gateway.experiments.recorder import Recorder
from gateway.experiments.store import (
    Event,
    ExperimentStore,
    Exposures,
    Guardrail,
    LocalExperimentStore,
    RedisExperimentStore,
)
from gateway.redisconn import RedisLink
from tests.harness import RedisServer
from tests.rediscluster import RedisBackend, cluster_backend, single_backend

METRICS = ("purchase", "order_value")


@pytest.fixture(params=["local", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ExperimentStore]:
    if request.param == "local":
        yield LocalExperimentStore()
        return
    backend = (single_backend(request.getfixturevalue("redis_server"))
               if request.param == "redis"
               else cluster_backend(request.getfixturevalue("redis_cluster")))
    link = RedisLink(backend.settings(timeout=2.0))
    try:
        yield RedisExperimentStore(link)
    finally:
        await link.close()


async def test_a_unit_keeps_the_variant_of_its_first_exposure_and_counts_once(
        store: ExperimentStore) -> None:
    applied = await store.apply("e", METRICS, [Exposures("a", ["u1"]),
                                               Exposures("b", ["u1", "u2", "u2"]),
                                               Exposures("a", ["u1"]), Exposures("c", [])])
    assert applied.new_units == 2
    await store.apply("e", METRICS, [Exposures("b", ["u1"])])  # a later batch, another variant
    tallies = await store.read("e")
    assert tallies.units == {"a": 1, "b": 1}


async def test_events_add_per_unit_sums_and_unexposed_units_are_counted_apart(
        store: ExperimentStore) -> None:
    await store.apply("e", METRICS, [Exposures("a", ["u1"]), Exposures("b", ["u2"])])
    applied = await store.apply("e", METRICS, [
        Event("order_value", "u1", 10.0), Event("order_value", "u1", 5.5),
        Event("order_value", "u2", 3.0), Event("purchase", "u1", 1.0),
        Event("purchase", "u1", 1.0), Event("purchase", "ghost", 1.0)])
    assert (applied.counted, applied.unexposed) == (5, 1)
    t = await store.read("e")
    assert t.get("order_value|a|c") == 1 and t.get("order_value|a|s") == 15.5
    assert t.get("order_value|a|q") == pytest.approx(15.5 ** 2)
    assert t.get("order_value|b|s") == 3.0 and t.get("order_value|b|q") == 9.0
    assert t.get("purchase|a|c") == 1 and t.get("purchase|b|c") == 0
    assert t.unexposed == {"purchase": 1}


async def test_an_event_id_makes_a_retry_count_once(store: ExperimentStore) -> None:
    await store.apply("e", METRICS, [Exposures("a", ["u1"])])
    first = await store.apply("e", METRICS, [Event("order_value", "u1", 7.0, "ev-1"),
                                             Event("order_value", "u1", 7.0, "ev-1")])
    again = await store.apply("e", METRICS, [Event("order_value", "u1", 7.0, "ev-1")])
    assert (first.counted, first.duplicates, again.counted, again.duplicates) == (1, 1, 0, 1)
    assert (await store.read("e")).get("order_value|a|s") == 7.0


async def test_guardrail_sums_add_up(store: ExperimentStore) -> None:
    await store.apply("e", METRICS, [Guardrail("a", 10, 2, 1.5, 0.3, ((0, 4), (2, 6))),
                                     Guardrail("a", 5, 1, 0.5, 0.1, ((1, 5),))])
    t = await store.read("e")
    assert (t.get("g|a|n"), t.get("g|a|e")) == (15, 3)
    assert t.get("g|a|ls") == pytest.approx(2.0) and t.get("g|a|lq") == pytest.approx(0.4)
    assert (t.get("g|a|h0"), t.get("g|a|h1"), t.get("g|a|h2")) == (4, 5, 6)


async def test_state_and_snapshots_are_kept(store: ExperimentStore) -> None:
    await store.set_state("e", {"status": "running", "started": "1700000000"})
    await store.set_state("e", {"status": "completed"})
    assert (await store.read("e")).state == {"status": "completed", "started": "1700000000"}
    for i in range(3):
        await store.add_snapshot("e", {"at": i})
    assert [s["at"] for s in await store.snapshots("e")] == [0, 1, 2]


async def test_a_batch_after_the_scripts_were_flushed_is_applied_once(
        redis_backend: RedisBackend) -> None:
    """SCRIPT FLUSH (or a restarted Redis) between two flushes: the next batch loads the
    script again and counts its units exactly once."""
    link = RedisLink(redis_backend.settings(timeout=2.0))
    try:
        store = RedisExperimentStore(link)
        await store.apply("e", METRICS, [Exposures("a", ["u1", "u2"])])
        for node in redis_backend.nodes:
            client = node()
            try:
                client.script_flush()
            finally:
                client.close()
        applied = await store.apply("e", METRICS, [Exposures("b", ["u2", "u3"]),
                                                   Exposures("a", ["u4"])])
        assert applied.new_units == 2
        assert (await store.read("e")).units == {"a": 3, "b": 1}
    finally:
        await link.close()


def dropped() -> float:
    return REGISTRY.get_sample_value("gateway_experiment_dropped_total") or 0.0


async def test_a_batch_redis_cannot_take_is_counted_dropped_and_exposed_again(
        redis_server: RedisServer) -> None:
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=1.0))
    recorder = Recorder(RedisExperimentStore(link))
    recorder.metrics = {"e": METRICS}
    slot = recorder.slot("e", "a")
    try:
        recorder.expose(slot, "u1")
        await recorder.flush()  # the store's connection is open from here on
        redis_server.stop()
        before = dropped()
        for unit in ("u2", "u3"):
            recorder.expose(slot, unit)
        await recorder.flush()
        assert dropped() - before == 2
        redis_server.start()  # empty
        for unit in ("u1", "u2", "u3"):  # forgotten by the drop: queued again
            recorder.expose(slot, unit)
        await recorder.flush()
        assert (await recorder.store.read("e")).units == {"a": 3}
    finally:
        await link.close()


async def test_both_stores_agree_on_a_random_stream(redis_backend: RedisBackend) -> None:
    rng = random.Random(5)
    records: list[Exposures | Event | Guardrail] = []
    for _ in range(3000):
        unit = f"u{rng.randrange(400)}"
        roll = rng.random()
        if roll < 0.4:
            records.append(Exposures(rng.choice("abc"),
                                     [unit, *(f"u{rng.randrange(400)}"
                                              for _ in range(rng.randrange(3)))]))
        elif roll < 0.9:
            records.append(Event(rng.choice(METRICS), unit, round(rng.uniform(0, 50), 2),
                                 rng.choice([None, f"id{rng.randrange(300)}"])))
        else:
            records.append(Guardrail(rng.choice("abc"), 3, rng.randrange(2), 0.2, 0.05,
                                     ((0, 1), (rng.randrange(60), 2))))
    local = LocalExperimentStore()
    link = RedisLink(redis_backend.settings(timeout=5.0))
    try:
        remote = RedisExperimentStore(link)
        for start in range(0, len(records), 250):
            batch = records[start:start + 250]
            assert await local.apply("e", METRICS, batch) == \
                await remote.apply("e", METRICS, batch)
        a, b = await local.read("e"), await remote.read("e")
    finally:
        await link.close()
    assert a.units == b.units and a.unexposed == b.unexposed
    assert set(a.aggregates) == {k for k, v in b.aggregates.items()}
    for name, value in a.aggregates.items():
        assert b.aggregates[name] == pytest.approx(value, rel=1e-9), name
