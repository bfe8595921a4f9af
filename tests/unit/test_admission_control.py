"""Admission control as pure logic: the limit, the priority queue, shedding and CoDel, with
the clock passed in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.admission.control import (
    CODEL,
    DRAIN,
    GRANTED,
    MAX_WAIT,
    QUEUE_FULL,
    Controller,
    Waiter,
)
from gateway.admission.gate import merge_reports, rank_of
from gateway.admission.limit import GradientLimit
from gateway.config.model import DEFAULT_MAX_WAIT, Admission, Priority
from gateway.config.parse import parse_document
from gateway.config.reader import ConfigError
from tests.harness import REPO, reference_config_with

CRITICAL, HIGH, NORMAL, LOW, BULK = range(5)


def settings(**changes: object) -> Admission:
    base: dict[str, object] = {"max_concurrency": 2, "queue_size": 100,
                               "target_delay": 0.02, "interval": 0.1}
    base.update(changes)
    return Admission(**base)  # type: ignore[arg-type]


def waits(**changes: float) -> dict[str, float]:
    return {**DEFAULT_MAX_WAIT, **changes}


def queued(outcome: Waiter | str | None) -> Waiter:
    assert isinstance(outcome, Waiter), outcome
    return outcome


def granted(control: Controller) -> list[Waiter]:
    out = [w for w in control.settled if w.outcome == GRANTED]
    control.settled = [w for w in control.settled if w.outcome != GRANTED]
    return out


def test_the_limit_holds_and_a_returned_permit_goes_to_the_next_waiter() -> None:
    control = Controller(settings())
    assert control.arrive(NORMAL, 0.0) is None
    assert control.arrive(NORMAL, 0.0) is None
    waiter = queued(control.arrive(NORMAL, 0.0))
    assert control.inflight == 2 and control.waiting == 1
    control.release(0.05, 0.05, 0.05)
    assert granted(control) == [waiter] and control.inflight == 2 and control.waiting == 0


def test_higher_classes_always_leave_first_and_fifo_within_a_class() -> None:
    control = Controller(settings(max_concurrency=1))
    assert control.arrive(NORMAL, 0.0) is None
    order = [queued(control.arrive(rank, 0.001 * i))
             for i, rank in enumerate((BULK, NORMAL, BULK, CRITICAL, NORMAL, HIGH))]
    served = []
    for i in range(len(order)):
        control.release(0.01, 0.01, 0.01 + i * 0.001)
        served += granted(control)
    assert [w.rank for w in served] == [CRITICAL, HIGH, NORMAL, NORMAL, BULK, BULK]
    assert served[2] is order[1] and served[3] is order[4]  # first come, first served


def test_a_full_queue_sheds_the_newest_waiter_of_the_lowest_class_below_the_arrival() -> None:
    control = Controller(settings(max_concurrency=1, queue_size=3))
    control.arrive(NORMAL, 0.0)
    old_bulk = queued(control.arrive(BULK, 0.0))
    low = queued(control.arrive(LOW, 0.0))
    new_bulk = queued(control.arrive(BULK, 0.0))
    critical = queued(control.arrive(CRITICAL, 0.0))
    assert new_bulk.outcome == QUEUE_FULL and old_bulk.outcome is None
    assert critical.outcome is None and control.waiting == 3
    # An arrival with nothing below it to displace is refused itself.
    assert control.arrive(BULK, 0.0) == QUEUE_FULL
    queued(control.arrive(NORMAL, 0.0))
    assert old_bulk.outcome == QUEUE_FULL and low.outcome is None


def test_a_request_whose_expected_wait_exceeds_max_wait_is_shed_at_once() -> None:
    control = Controller(settings(max_concurrency=2))
    control.arrive(NORMAL, 0.0)
    control.arrive(NORMAL, 0.0)
    control.release(0.1, 0.1, 0.1)  # a permit is held 100 ms: one leaves every 50 ms
    control.arrive(NORMAL, 0.1)
    # bulk may wait 100 ms: the 1st and 2nd bulk waiter expect 50 and 100 ms, the 3rd 150.
    assert isinstance(control.arrive(BULK, 0.1), Waiter)
    assert isinstance(control.arrive(BULK, 0.1), Waiter)
    assert control.arrive(BULK, 0.1) == MAX_WAIT
    # A critical request stands only behind critical waiters: it still gets in.
    assert isinstance(control.arrive(CRITICAL, 0.1), Waiter)
    assert control.retry_after(BULK) == 1


def test_a_waiter_still_queued_at_its_max_wait_is_shed_then() -> None:
    control = Controller(settings(max_concurrency=1))
    control.arrive(NORMAL, 0.0)
    bulk = queued(control.arrive(BULK, 0.0))
    normal = queued(control.arrive(NORMAL, 0.0))
    assert control.next_wakeup() == pytest.approx(0.02)  # the CoDel check comes first
    control.tick(0.1)
    assert bulk.outcome == MAX_WAIT and normal.outcome is None
    control.tick(0.5)
    assert normal.outcome == MAX_WAIT and control.waiting == 0


def test_codel_sheds_the_oldest_lowest_class_waiters_once_the_queue_stands() -> None:
    control = Controller(settings(max_concurrency=1, max_wait={
        "critical": 5.0, "high": 5.0, "normal": 5.0, "low": 5.0, "bulk": 5.0}))
    control.arrive(NORMAL, 0.0)
    control.release(0.01, 0.01, 0.01)  # a permit is held 10 ms
    control.arrive(NORMAL, 0.01)
    bulk = [queued(control.arrive(BULK, t)) for t in (0.02, 0.03, 0.2)]
    low = queued(control.arrive(LOW, 0.02))
    control.tick(0.05)  # the oldest has waited over the 20 ms target: watching
    assert not control.standing
    control.tick(0.14)  # not a whole interval yet
    assert not control.standing and all(w.outcome is None for w in bulk)
    young = [queued(control.arrive(NORMAL, 0.15)) for _ in range(3)]
    control.tick(0.16)  # above the target for 110 ms: standing
    assert control.standing
    # The lowest class's waiters older than the target go, oldest first; others stay.
    assert [w.outcome for w in bulk] == [CODEL, CODEL, None] and low.outcome is None
    assert all(w.outcome is None for w in young)
    # While it stands, an arrival may expect no more than the target delay: a bulk one
    # behind the normal waiters (40 ms) is refused at once, a critical one goes first.
    assert control.arrive(BULK, 0.16) == CODEL
    assert isinstance(control.arrive(CRITICAL, 0.16), Waiter)


def test_the_standing_state_ends_only_when_the_queue_empties() -> None:
    control = Controller(settings(max_concurrency=1))
    control.arrive(NORMAL, 0.0)
    queued(control.arrive(BULK, 0.0))
    control.tick(0.03)
    queued(control.arrive(CRITICAL, 0.13))
    queued(control.arrive(CRITICAL, 0.13))
    control.tick(0.14)
    assert control.standing  # the bulk waiter was shed; the critical ones are young
    control.release(0.14, 0.14, 0.14)
    assert control.standing  # one left, one still waits, younger than the target
    control.release(0.01, 0.01, 0.15)
    assert control.waiting == 0 and not control.standing


def test_a_client_that_leaves_leaves_the_queue_at_once() -> None:
    control = Controller(settings(max_concurrency=1))
    control.arrive(NORMAL, 0.0)
    gone = queued(control.arrive(NORMAL, 0.0))
    stays = queued(control.arrive(NORMAL, 0.0))
    assert control.leave(gone) and control.waiting == 1
    control.release(0.01, 0.01, 0.01)
    assert granted(control) == [stays]
    assert not control.leave(stays)  # already granted: the caller gives the permit back
    control.give_back(0.02)
    assert control.inflight == 0


def test_drain_answers_every_waiter_by_the_deadline_it_sets() -> None:
    control = Controller(settings(max_concurrency=1))
    control.arrive(NORMAL, 0.0)
    first = queued(control.arrive(CRITICAL, 0.0))
    second = queued(control.arrive(CRITICAL, 0.0))
    control.drain(until=1.0, now=0.5)
    control.release(0.6, 0.6, 0.6)
    assert first.outcome == GRANTED
    control.tick(1.0)
    assert second.outcome == DRAIN
    assert control.arrive(CRITICAL, 1.1) == DRAIN  # nobody new waits past the deadline


def test_the_instance_limit_is_split_equally_among_workers_at_least_one_each() -> None:
    assert Controller(settings(max_concurrency=20), workers=2).limit == 10
    assert Controller(settings(max_concurrency=3), workers=2).limit == 1
    adaptive = Controller(settings(max_concurrency=None, min=4, max=200), workers=2).limiter
    assert isinstance(adaptive, GradientLimit) and (adaptive.low, adaptive.high) == (2, 100)
    assert Controller(settings(queue_size=1000), workers=2).queue_size == 500


def test_reports_of_workers_sum_into_the_instance_view() -> None:
    one = {"upstreams": {"api": {"mode": "static", "limit": 10, "in_flight": 3, "queue_size": 5,
                                 "standing_queue": False,
                                 "queue": {"critical": 1, "high": 0, "normal": 0, "low": 0,
                                           "bulk": 2}}}}
    merged = merge_reports([one, one])
    api = merged["upstreams"]["api"]
    assert (merged["workers"], api["limit"], api["in_flight"]) == (2, 20, 6)
    assert api["queue"]["critical"] == 2 and api["queue"]["bulk"] == 4


def test_a_tier_moves_the_route_class_up_or_down_within_the_five() -> None:
    by_tier = {"enterprise": 1, "free": -1}
    assert rank_of(Priority.NORMAL, "enterprise", by_tier) == HIGH
    assert rank_of(Priority.NORMAL, "free", by_tier) == LOW
    assert rank_of(Priority.CRITICAL, "enterprise", by_tier) == CRITICAL
    assert rank_of(Priority.BULK, "free", by_tier) == BULK
    assert rank_of(Priority.NORMAL, None, by_tier) == NORMAL


def serve_processor_sharing(limit: GradientLimit, capacity: int, floor: float, start: float,
                            seconds: float) -> float:
    """Drive `limit` with an upstream that serves `capacity` requests at once in `floor`
    seconds and shares itself among more (each takes floor * n / capacity), always
    offered more than the limit. Returns the time it stopped."""
    now = start
    while now < start + seconds:
        inflight = limit.limit
        latency = floor * max(1.0, inflight / capacity)
        limit.saturated = True
        for _ in range(inflight):
            limit.sample(latency, inflight, now)
        now += latency
    return now


def test_the_adaptive_limit_grows_to_the_upstream_capacity_and_follows_it_down() -> None:
    limit = GradientLimit(2, 100)
    now = serve_processor_sharing(limit, capacity=20, floor=0.05, start=0.0, seconds=3.0)
    assert 20 <= limit.limit <= 36  # capacity plus headroom: C + sqrt(C) to 1.5 C + sqrt
    serve_processor_sharing(limit, capacity=10, floor=0.05, start=now, seconds=1.0)
    assert 10 <= limit.limit <= 19


def test_the_adaptive_limit_stays_while_the_upstream_is_not_busy() -> None:
    limit = GradientLimit(2, 100)
    for i in range(50):
        limit.sample(0.05, 1, i * 0.05)  # never saturated: no evidence more would help
    assert limit.limit == 2


def test_the_reference_config_with_admission_passes_gateway_check(tmp_path: Path) -> None:
    path = reference_config_with(tmp_path, "admission")
    done = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_admission_config_errors_name_the_key_and_what_is_wrong() -> None:
    doc = {
        "workers": 2,
        "context": {"priority_by_tier": {"gold": 7, "silver": "+1"}},
        "upstreams": {
            "a": {"url": "http://127.0.0.1:1", "admission": {
                "max_concurrency": 10, "min": 2, "max_wait": {"bulky": "1s"}}},
            "b": {"url": "http://127.0.0.1:1", "admission": {"max_concurrency": "lots"}},
            "c": {"url": "http://127.0.0.1:1", "admission": {"max_concurrency": 1}},
            "d": {"url": "http://127.0.0.1:1", "admission": {
                "max_concurrency": "adaptive", "min": 50, "max": 10, "queue_sise": 3}},
        },
        "routes": [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "a",
                    "priority": "urgent"}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_document(doc, "g.yaml")
    text = "\n".join(f"{i.path}: {i.message}" for i in caught.value.issues)
    assert "context.priority_by_tier.gold: must be at most 4" in text
    assert "context.priority_by_tier: needs context.subscription_tier" in text
    assert "upstreams.a.admission.min: applies only to max_concurrency: adaptive" in text
    assert "upstreams.a.admission.max_wait.bulky: unknown priority class 'bulky'" in text
    assert "(did you mean 'bulk'?)" in text
    assert "upstreams.b.admission.max_concurrency: expected a whole number or adaptive" in text
    assert "upstreams.c.admission.max_concurrency: 1 is less than workers (2)" in text
    assert "upstreams.d.admission.min: min (50) is larger than max (10)" in text
    assert "upstreams.d.admission.queue_sise: unknown key 'queue_sise' (did you mean " \
           "'queue_size'?)" in text
    assert "routes[0].priority: must be one of critical, high, normal, low, bulk" in text


def test_a_permit_dropped_without_release_is_given_back() -> None:
    import asyncio
    import gc

    from gateway.admission.gate import Gate

    gate = Gate("unit-dropped", settings(max_concurrency=1))

    async def take_and_drop() -> None:
        permit = await gate.enter(NORMAL)
        assert gate.control.inflight == 1
        del permit  # an exchange abandoned on an error path, never released

    asyncio.run(take_and_drop())
    gc.collect()
    assert gate.control.inflight == 0


def test_codel_never_sheds_critical_waiters() -> None:
    control = Controller(settings(max_concurrency=1))
    control.arrive(NORMAL, 0.0)
    critical = [queued(control.arrive(CRITICAL, 0.0)) for _ in range(3)]
    control.tick(0.03)
    control.tick(0.2)
    assert control.standing and all(w.outcome is None for w in critical)


def test_permits_granted_together_come_back_together_and_the_estimate_knows_it() -> None:
    control = Controller(settings(max_concurrency=4, max_wait=waits(bulk=0.05)))
    for _ in range(4):
        control.arrive(NORMAL, 0.0)
    for _ in range(4):
        control.release(0.1, 0.1, 0.1)  # a permit is held 100 ms
    for _ in range(4):
        control.arrive(NORMAL, 0.1)  # a cohort: all four come back at about 0.2
    # By rate alone a permit comes back every 25 ms; by the schedule, none before 0.2.
    assert control.arrive(BULK, 0.1) == MAX_WAIT
    assert isinstance(control.arrive(BULK, 0.19), Waiter)  # just before the cohort returns


def test_a_scattered_latency_counts_against_a_permit_coming_back_on_time() -> None:
    control = Controller(settings(max_concurrency=2, max_wait=waits(bulk=0.06)))
    control.arrive(NORMAL, 0.0)
    for i in range(40):  # held 50 and 150 ms in turn: 100 ms on average, give or take 50
        control.release(0.05 if i % 2 else 0.15, 0.1, 1.0)
        control.arrive(NORMAL, 1.0)
    control.arrive(NORMAL, 1.0)
    assert 0.09 < control.rtt < 0.11 and control.spread > 0.04
    # Both permits went out at 1.0. By the mean the first comes back 40 ms from now, within
    # bulk's 60 ms; one as late as they often are comes back after it.
    assert control.arrive(BULK, 1.0 + control.rtt - 0.04) == MAX_WAIT


def test_the_estimate_counts_the_higher_class_arrivals_that_will_pass() -> None:
    def after_critical_traffic(every: float) -> Controller:
        control = Controller(settings(max_concurrency=1, max_wait=waits(bulk=0.03)))
        control.arrive(NORMAL, 0.0)
        now = 0.0
        while now < 3.0:  # critical arrivals while the permit is out, each served next
            queued(control.arrive(CRITICAL, now))
            control.release(0.01, 0.01, now + 0.001)
            now += every
        return control

    # A permit every 10 ms; a critical arrival every 12.5 ms takes 80% of them: a bulk
    # request first in its class waits ~50 ms, not 10.
    assert after_critical_traffic(0.0125).arrive(BULK, 3.0) == MAX_WAIT
    assert isinstance(after_critical_traffic(0.1).arrive(BULK, 3.0), Waiter)
    # Critical arrivals faster than permits come back: no bulk wait would ever end, and
    # Retry-After still says something a client can act on.
    flooded = after_critical_traffic(0.008)
    assert flooded.arrive(BULK, 3.0) == MAX_WAIT and flooded.retry_after(BULK, 3.0) == 60


def test_arrivals_stay_held_to_the_target_while_the_overload_goes_on() -> None:
    control = Controller(settings(max_concurrency=1, max_wait=waits(bulk=0.5)))
    control.arrive(NORMAL, 0.0)
    control.release(0.05, 0.05, 0.05)  # a permit is held 50 ms
    control.arrive(NORMAL, 0.05)
    bulk = queued(control.arrive(BULK, 0.05))
    control.tick(0.08)
    control.tick(0.19)  # it stood past the target for an interval: CoDel sheds it
    assert bulk.outcome == CODEL
    assert not control.standing and control.waiting == 0  # the queue emptied
    # An arrival behind a waiter that expects more than the target is still refused at
    # once (the head of the queue stays open), and each refusal holds an interval longer...
    queued(control.arrive(NORMAL, 0.2))
    assert control.arrive(BULK, 0.25) == CODEL
    control.release(0.21, 0.21, 0.26)
    queued(control.arrive(NORMAL, 0.3))
    assert control.arrive(BULK, 0.34) == CODEL
    control.release(0.09, 0.09, 0.35)
    # ...until an interval passes without one: then bulk may wait its max_wait again.
    queued(control.arrive(NORMAL, 0.4))
    assert isinstance(control.arrive(BULK, 0.45), Waiter)
    assert not control.standing


def test_a_critical_waiter_past_the_target_asks_for_no_wakeup_it_cannot_use() -> None:
    control = Controller(settings(max_concurrency=1))
    control.arrive(NORMAL, 0.0)
    queued(control.arrive(CRITICAL, 0.0))
    control.tick(0.03)
    control.tick(0.2)
    assert control.standing
    wakeup = control.next_wakeup()
    assert wakeup is not None and wakeup > 0.2  # its deadline, not "now" over and over
