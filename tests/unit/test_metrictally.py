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
    tally.groups[group] = tally.groups.get(group, 0) + 1


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


async def test_tally_applies_once_per_loop_turn_and_tracks_inflight() -> None:
    tally = Tally()
    route = "tally-test-route"
    requests = metrics.REQUESTS_BY(route, "GET", "200")
    duration = metrics.REQUEST_DURATION_BY(route)
    before_requests = requests._value.get()
    before_count = sum(b.get() for b in duration._buckets)

    tally.started()
    tally.started()
    await asyncio.sleep(0)
    assert tally.inflight == 2
    assert metrics.INFLIGHT._value.get() == 2
    tally.finished(route, "GET", "200", 0.002)
    tally.finished(route, "GET", "200", 0.004)
    assert requests._value.get() == before_requests  # not yet: end of this loop turn
    await asyncio.sleep(0)
    assert requests._value.get() == before_requests + 2
    assert sum(b.get() for b in duration._buckets) == before_count + 2
    assert metrics.INFLIGHT._value.get() == 0


def test_tally_survives_a_loop_that_closed_with_a_flush_queued() -> None:
    tally = Tally()
    route = "tally-closed-loop"
    requests = metrics.REQUESTS_BY(route, "GET", "200")

    async def one() -> None:
        tally.started()
        tally.finished(route, "GET", "200", 0.001)

    first = asyncio.new_event_loop()
    first.run_until_complete(one())  # the flush may or may not run before the loop closes
    first.close()
    seen = requests._value.get()

    async def two() -> None:
        tally.started()
        tally.finished(route, "GET", "200", 0.001)
        await asyncio.sleep(0)

    asyncio.run(two())
    assert requests._value.get() >= seen + 1


async def test_counter_increments_are_applied_at_the_end_of_the_loop_turn() -> None:
    import asyncio

    from prometheus_client import CollectorRegistry, Counter

    from gateway.metrictally import Tally

    counter = Counter("tally_test_flag_evaluations", "test", ("flag",),
                      registry=CollectorRegistry())
    child = counter.labels("beta")
    tally = Tally()
    for _ in range(5):
        tally.inc(child)
    assert child._value.get() == 0  # nothing applied within the turn
    await asyncio.sleep(0)
    assert child._value.get() == 5


async def test_a_counter_group_increments_each_of_its_counters() -> None:
    import asyncio

    from prometheus_client import CollectorRegistry, Counter

    from gateway.metrictally import CounterGroup, Tally

    counter = Counter("tally_test_groups", "test", ("flag",), registry=CollectorRegistry())
    a, b, c = counter.labels("a"), counter.labels("b"), counter.labels("c")
    ab, bc = CounterGroup([a, b]), CounterGroup([b, c])
    tally = Tally()
    tally.started()
    for _ in range(3):
        count(tally, ab)
    count(tally, bc)
    await asyncio.sleep(0)  # the flush `started` queued: the first one applies groups
    assert (a._value.get(), b._value.get(), c._value.get()) == (3, 4, 1)
    count(tally, ab)
    tally.finished("r", "GET", "200", 0.001)
    assert a._value.get() == 3  # nothing applied within the turn
    await asyncio.sleep(0)
    # Groups wait up to GROUPS_EVERY seconds after the last application...
    assert (a._value.get(), b._value.get(), c._value.get()) == (3, 4, 1)
    tally.apply_all()  # ...unless /metrics is read
    assert (a._value.get(), b._value.get(), c._value.get()) == (4, 5, 1)
    count(tally, bc)
    tally._groups_due = 0.0  # as if the second had passed
    tally.flush()
    assert (a._value.get(), b._value.get(), c._value.get()) == (4, 6, 2)


def test_outside_a_loop_updates_apply_at_once() -> None:
    from prometheus_client import CollectorRegistry, Counter

    from gateway.metrictally import Tally

    counter = Counter("tally_test_outside", "test", registry=CollectorRegistry())
    tally = Tally()
    tally.inc(counter)
    assert counter._value.get() == 1


async def test_held_back_groups_are_applied_within_the_interval_without_more_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry, Counter

    from gateway import metrictally

    monkeypatch.setattr(metrictally, "GROUPS_EVERY", 0.05)
    counter = Counter("tally_test_timer", "test", ("flag",), registry=CollectorRegistry())
    a = counter.labels("a")
    tally = metrictally.Tally()
    group = metrictally.CounterGroup([a])
    tally.started()
    count(tally, group)
    tally.finished("r", "GET", "200", 0.001)
    await asyncio.sleep(0)
    assert a._value.get() == 1  # the first flush applies at once
    tally.started()
    count(tally, group)
    tally.finished("r", "GET", "200", 0.001)
    await asyncio.sleep(0)
    assert a._value.get() == 1  # held back ...
    await asyncio.sleep(0.2)
    assert a._value.get() == 2  # ... and applied though no request came since
