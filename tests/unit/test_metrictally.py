"""The batched request metrics give exactly what per-request prometheus calls give."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Histogram

from gateway import metrics
from gateway.metrictally import CounterGroup, Tally
from gateway.wire.prometheus import observe_many


def count(tally: Tally, group: CounterGroup) -> None:
    """What a flag decider does with the group it decided (gateway/flags/plan.py)."""
    tally.noted.append(group)


AMOUNTS = [0.0, 0.0004, 0.0005, 0.00051, 0.003, 0.003, 0.7, 29.9, 30.0, 31.0, 1e9]


def _histogram() -> Histogram:
    return Histogram("h", "test", ("route",), buckets=metrics.LATENCY_BUCKETS,
                     registry=CollectorRegistry())


def _samples(family: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value
            for m in family.collect() for s in m.samples if not s.name.endswith("_created")}


def test_observe_many_matches_observe_including_bucket_edges() -> None:
    one_by_one, batched = _histogram(), _histogram()
    for amount in AMOUNTS:
        one_by_one.labels("r").observe(amount)
    observe_many(batched.labels("r"), AMOUNTS)
    expected, got = _samples(one_by_one), _samples(batched)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got[("h_count", "")] == len(AMOUNTS)


def test_observe_many_of_one_amount_matches_observe() -> None:
    # A loop turn that finished a single request takes a shorter path: same result.
    one_by_one, batched = _histogram(), _histogram()
    for amount in AMOUNTS:
        one_by_one.labels("r").observe(amount)
        observe_many(batched.labels("r"), [amount])
        assert _samples(batched) == pytest.approx(_samples(one_by_one), rel=1e-12), amount


def test_observe_many_of_nothing_changes_nothing() -> None:
    family = _histogram()
    observe_many(family.labels("r"), [])
    assert all(v == 0 for v in _samples(family).values())


async def test_tally_applies_when_metrics_are_read_and_tracks_inflight() -> None:
    tally = Tally()
    route = "tally-test-route"
    requests = metrics.REQUESTS_BY(route, "GET", "200")
    duration = metrics.REQUEST_DURATION_BY(route)
    before_requests = requests._value.get()
    before_count = sum(b.get() for b in duration._buckets)

    tally.started()
    tally.started()
    tally.apply_all()
    assert tally.inflight == 2
    assert metrics.INFLIGHT._value.get() == 2
    tally.finished(route, "GET", "200", 0.002)
    tally.finished(route, "GET", "200", 0.004)
    await asyncio.sleep(0)
    assert requests._value.get() == before_requests  # not yet: held for the timer
    tally.apply_all()  # what /metrics does before it renders
    assert requests._value.get() == before_requests + 2
    assert sum(b.get() for b in duration._buckets) == before_count + 2
    assert metrics.INFLIGHT._value.get() == 0
    tally.apply_all()  # nothing twice
    assert requests._value.get() == before_requests + 2


async def test_held_back_figures_are_applied_within_the_interval_without_a_scrape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import metrictally

    monkeypatch.setattr(metrictally, "FLUSH_EVERY", 0.05)
    tally = metrictally.Tally()
    route = "tally-timer-route"
    requests = metrics.REQUESTS_BY(route, "GET", "200")
    before = requests._value.get()
    tally.started()
    tally.finished(route, "GET", "200", 0.001)
    await asyncio.sleep(0)
    assert requests._value.get() == before
    await asyncio.sleep(0.2)
    assert requests._value.get() == before + 1  # the timer applied it
    tally.started()
    tally.finished(route, "GET", "200", 0.001)
    await asyncio.sleep(0.2)
    assert requests._value.get() == before + 2  # and the next update timed another flush


def test_tally_survives_a_loop_that_closed_with_a_flush_pending() -> None:
    tally = Tally()
    route = "tally-closed-loop"
    requests = metrics.REQUESTS_BY(route, "GET", "200")

    async def one() -> None:
        tally.started()
        tally.finished(route, "GET", "200", 0.001)

    first = asyncio.new_event_loop()
    first.run_until_complete(one())  # its flush was timed on a loop that now closes
    first.close()
    seen = requests._value.get()

    async def two() -> None:
        tally.started()
        tally.finished(route, "GET", "200", 0.001)
        tally.apply_all()

    asyncio.run(two())
    assert requests._value.get() == seen + 2  # nothing lost with the closed loop


async def test_counter_increments_wait_for_the_flush() -> None:
    from prometheus_client import CollectorRegistry, Counter

    counter = Counter("tally_test_flag_evaluations", "test", ("flag",),
                      registry=CollectorRegistry())
    child = counter.labels("beta")
    tally = Tally()
    for _ in range(5):
        tally.inc(child)
    await asyncio.sleep(0)
    assert child._value.get() == 0  # nothing applied before the flush
    tally.apply_all()
    assert child._value.get() == 5


async def test_a_counter_group_increments_each_of_its_counters() -> None:
    from prometheus_client import CollectorRegistry, Counter

    counter = Counter("tally_test_groups", "test", ("flag",), registry=CollectorRegistry())
    a, b, c = counter.labels("a"), counter.labels("b"), counter.labels("c")
    ab, bc = CounterGroup([a, b]), CounterGroup([b, c])
    tally = Tally()
    tally.started()
    for _ in range(3):
        count(tally, ab)
    count(tally, bc)
    tally.finished("r", "GET", "200", 0.001)
    tally.apply_all()
    assert (a._value.get(), b._value.get(), c._value.get()) == (3, 4, 1)
    count(tally, ab)
    count(tally, bc)
    tally.flush()
    assert (a._value.get(), b._value.get(), c._value.get()) == (4, 6, 2)


def test_outside_a_loop_updates_apply_at_once() -> None:
    from prometheus_client import CollectorRegistry, Counter

    counter = Counter("tally_test_outside", "test", registry=CollectorRegistry())
    tally = Tally()
    tally.inc(counter)
    assert counter._value.get() == 1
