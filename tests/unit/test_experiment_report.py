"""The report's verdicts from tallies: pure, no store, no clock."""

from __future__ import annotations

from gateway.config.model import Experiment, ExperimentMetric, Goal, MetricType
from gateway.experiments.report import LATENCY_BOUNDS, latency_bucket, quantile, report
from gateway.experiments.store import Tallies

WEIGHTS = {"control": 50, "treatment": 50}
PURCHASE = ExperimentMetric("purchase", primary=True, baseline_rate=0.10,
                            minimum_detectable_effect=0.05)


def experiment(*metrics: ExperimentMetric, sequential: bool = False) -> Experiment:
    return Experiment("e", "f", "control", metrics=metrics or (PURCHASE,),
                      sequential=sequential)


def tallies(units: dict[str, int], **aggregates: float) -> Tallies:
    return Tallies(units=units, aggregates={k.replace("__", "|"): v
                                            for k, v in aggregates.items()})


def test_a_large_true_effect_is_significant_and_names_the_winner() -> None:
    t = tallies({"control": 1000, "treatment": 1000},
                purchase__control__c=100, purchase__treatment__c=160)
    found = report(experiment(), WEIGHTS, t, {}, 0.0)
    assert (found["status"], found["variant"], found["direction"]) == \
        ("significant", "treatment", "winner")
    level = found["metrics"][0]["variants"]["treatment"]
    assert level["value"] == 0.16 and level["comparison"]["difference"] == 0.06


def test_a_drop_against_the_goal_is_a_loser() -> None:
    t = tallies({"control": 1000, "treatment": 1000},
                purchase__control__c=160, purchase__treatment__c=100)
    found = report(experiment(), WEIGHTS, t, {}, 0.0)
    assert (found["status"], found["direction"]) == ("significant", "loser")


def test_equal_rates_with_the_sample_reached_are_no_effect() -> None:
    t = tallies({"control": 700, "treatment": 700},
                purchase__control__c=70, purchase__treatment__c=72)
    found = report(experiment(), WEIGHTS, t, {}, 0.0)
    needed = found["metrics"][0]["units_needed_per_variant"]
    assert needed is not None and needed < 700
    assert found["status"] == "no_effect" and found["metrics"][0]["progress"] == 1.0


def test_equal_rates_before_the_sample_is_reached_are_still_collecting() -> None:
    t = tallies({"control": 200, "treatment": 200},
                purchase__control__c=20, purchase__treatment__c=22)
    found = report(experiment(), WEIGHTS, t, {}, 0.0)
    assert found["status"] == "collecting" and 0 < found["metrics"][0]["progress"] < 1


def test_units_off_the_configured_weights_are_a_sample_ratio_mismatch() -> None:
    t = tallies({"control": 1000, "treatment": 850},
                purchase__control__c=100, purchase__treatment__c=140)
    found = report(experiment(), WEIGHTS, t, {}, 0.0)
    assert found["srm"]["mismatch"] and found["status"] == "srm"


def test_a_guardrail_trips_only_against_its_goal() -> None:
    errors = ExperimentMetric("errors", type=MetricType.ERROR_RATE, guardrail=True,
                              goal=Goal.DECREASE)
    worse = tallies({"control": 500, "treatment": 500}, g__control__n=500, g__control__e=5,
                    g__treatment__n=500, g__treatment__e=40)
    found = report(experiment(PURCHASE, errors), WEIGHTS, worse, {}, 0.0)
    assert found["status"] == "guardrail_tripped"
    assert found["guardrails"][0]["metric"] == "errors"
    better = tallies({"control": 500, "treatment": 500}, g__control__n=500, g__control__e=40,
                     g__treatment__n=500, g__treatment__e=5)
    assert report(experiment(PURCHASE, errors), WEIGHTS, better, {}, 0.0)["status"] != \
        "guardrail_tripped"


def test_holm_adjusts_the_p_values_of_several_treatments() -> None:
    weights = {"control": 1, "b": 1, "c": 1}
    t = tallies({"control": 1000, "b": 1000, "c": 1000}, purchase__control__c=100,
                purchase__b__c=130, purchase__c__c=101)
    found = report(experiment(), weights, t, {}, 0.0)
    rows = {v: level["comparison"] for v, level in found["metrics"][0]["variants"].items()
            if "comparison" in level}
    smallest = min(rows.values(), key=lambda r: r["p_value"])
    assert smallest["adjusted_p_value"] == min(1.0, 2 * smallest["p_value"])


def test_sequential_p_values_only_fall_across_looks() -> None:
    strong = tallies({"control": 1000, "treatment": 1000},
                     purchase__control__c=100, purchase__treatment__c=170)
    first = report(experiment(sequential=True), WEIGHTS, strong, {}, 0.0)
    looks = first["new_looks"]
    p_first = looks["purchase|treatment"]
    weak = tallies({"control": 1100, "treatment": 1100},
                   purchase__control__c=110, purchase__treatment__c=120)
    later = report(experiment(sequential=True), WEIGHTS, weak, looks, 1.0)
    comparison = later["metrics"][0]["variants"]["treatment"]["comparison"]
    assert comparison["p_value"] == p_first  # the running minimum is kept
    assert comparison["fixed_p_value"] > p_first


def test_mean_metrics_use_the_per_unit_sums_over_every_exposed_unit() -> None:
    value = ExperimentMetric("order_value", type=MetricType.MEAN)
    # control: 4 units, sums 10 and 20 (two units bought nothing): mean 7.5
    t = tallies({"control": 4, "treatment": 4}, order_value__control__s=30,
                order_value__control__q=500, order_value__treatment__s=40,
                order_value__treatment__q=800)
    level = report(experiment(PURCHASE, value), WEIGHTS, t, {}, 0.0)["metrics"][1]["variants"]
    assert level["control"]["value"] == 7.5 and level["treatment"]["value"] == 10.0


def test_latency_quantiles_come_from_the_histogram_within_one_bucket() -> None:
    durations = [0.010] * 50 + [0.100] * 45 + [1.0] * 5
    histogram = [0] * (len(LATENCY_BOUNDS) + 1)
    for d in durations:
        histogram[latency_bucket(d)] += 1
    p50, p95 = quantile(histogram, 0.5), quantile(histogram, 0.95)
    assert p50 is not None and 0.010 <= p50 < 0.010 * 2 ** 0.25
    assert p95 is not None and 0.100 <= p95 < 0.100 * 2 ** 0.25


def test_latency_bucket_is_the_first_bound_that_holds_the_duration() -> None:
    import bisect

    samples = [0.0, 1e-6, *LATENCY_BOUNDS, *(b * 1.0000001 for b in LATENCY_BOUNDS),
               *(b * 0.9999999 for b in LATENCY_BOUNDS), 1e4]
    for seconds in samples:
        assert latency_bucket(seconds) == bisect.bisect_left(LATENCY_BOUNDS, seconds), seconds
