"""An experiment's report from its tallies: pure, the clock and the tallies passed in.

Per metric, every treatment is compared with control (gateway/experiments/stats.py): a
conversion rate or an error rate by the two-proportion z-test, a mean per unit or a latency
by Welch's t-test; with more than one treatment, p-values are Holm-adjusted per metric.
With `sequential: true` the p-value is the always-valid one of mSPRT (the running minimum
over every look the gateway has taken, `Looks`) and the interval its confidence sequence.

The verdict, in this order: `guardrail_tripped` (a guardrail moved against its goal,
one-sided at the significance level), `srm` (units do not follow the weights, chi-square
p < 0.001: every other figure is untrustworthy), `significant` (the primary metric differs;
`winner` or `loser` says in which direction against its goal), `no_effect` (every variant
has the units the primary metric needs and nothing is significant), else `collecting`.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config.model import Experiment, ExperimentMetric, Goal, MetricType
from gateway.experiments import stats
from gateway.experiments.store import Tallies

SRM_P = 0.001
# Latency histogram: bucket i holds durations up to LATENCY_BOUNDS[i] seconds; the last is
# everything longer. Steps of 2^(1/4) (19%) from 0.5 ms to ~60 s: quantiles read off it are
# within one step of the truth.
LATENCY_BOUNDS = tuple(0.0005 * 2 ** (i / 4) for i in range(68))
# Without a minimum detectable effect, sequential tests mix over effects of this share of
# the control's level or spread (mSPRT needs a scale for the effects it expects).
DEFAULT_RELATIVE_EFFECT = 0.1


# The first bucket whose bound holds a duration in seconds. bisect's binary search in C,
# called without a Python frame, costs less than half the instructions of computing the
# bucket from a logarithm in Python (callgrind: ~1,200 against ~3,000 on the request path).
latency_bucket: Callable[[float], int] = functools.partial(bisect_left, LATENCY_BOUNDS)


def quantile(histogram: Sequence[float], q: float) -> float | None:
    total = sum(histogram)
    if total <= 0:
        return None
    wanted, running = q * total, 0.0
    for i, n in enumerate(histogram):
        running += n
        if running >= wanted and n > 0:
            return LATENCY_BOUNDS[min(i, len(LATENCY_BOUNDS) - 1)]
    return LATENCY_BOUNDS[-1]


@dataclass(frozen=True, slots=True)
class Level:
    """One variant's figures for one metric."""

    n: int  # units (conversion, mean), requests (error rate, latency)
    count: float  # units with an event, errors; for means the sum
    value: float  # rate or mean
    variance: float  # of one observation (p(1 - p) for rates)
    extra: Mapping[str, Any] = field(default_factory=dict)


def _levels(metric: ExperimentMetric, variant: str, tallies: Tallies) -> Level:
    get = tallies.get
    if metric.type in (MetricType.CONVERSION, MetricType.MEAN):
        n = tallies.units.get(variant, 0)
        prefix = f"{metric.name}|{variant}|"
        if metric.type is MetricType.CONVERSION:
            count = get(prefix + "c")
            rate = count / n if n else 0.0
            return Level(n, count, rate, rate * (1 - rate))
        total, squares = get(prefix + "s"), get(prefix + "q")
        mean = total / n if n else 0.0
        variance = (squares - total * total / n) / (n - 1) if n > 1 else 0.0
        return Level(n, total, mean, max(variance, 0.0))
    prefix = f"g|{variant}|"
    if metric.type is MetricType.ERROR_RATE:
        n = int(get(prefix + "n"))
        errors = get(prefix + "e")
        rate = errors / n if n else 0.0
        return Level(n, errors, rate, rate * (1 - rate))
    histogram = [get(f"{prefix}h{i}") for i in range(len(LATENCY_BOUNDS) + 1)]
    n = int(sum(histogram))
    total, squares = get(prefix + "ls"), get(prefix + "lq")
    mean = total / n if n else 0.0
    variance = (squares - total * total / n) / (n - 1) if n > 1 else 0.0
    return Level(n, total, mean, max(variance, 0.0),
                 {"p50": quantile(histogram, 0.5), "p95": quantile(histogram, 0.95)})


def _compare(metric: ExperimentMetric, c: Level, t: Level, alpha: float
             ) -> stats.Comparison | None:
    if c.n < 2 or t.n < 2:
        return None
    if metric.type in (MetricType.CONVERSION, MetricType.ERROR_RATE):
        return stats.two_proportions(int(c.count), c.n, int(t.count), t.n, alpha)
    return stats.welch(c.value, c.variance, c.n, t.value, t.variance, t.n, alpha)


def _tau(metric: ExperimentMetric, control: Level, treatment: Level) -> float:
    """The scale of effects the sequential test expects: the minimum detectable effect, else
    a tenth of the control's level or of one observation's spread, whichever is larger (a
    control at 0% errors still has a scale to measure a rise against)."""
    if metric.minimum_detectable_effect is not None:
        return metric.minimum_detectable_effect
    if metric.type in (MetricType.CONVERSION, MetricType.ERROR_RATE):
        pooled = (control.count + treatment.count) / (control.n + treatment.n)
        spread = math.sqrt(pooled * (1 - pooled))
    else:
        spread = math.sqrt(control.variance)
    return max(DEFAULT_RELATIVE_EFFECT * max(abs(control.value), spread), 1e-9)


def _sequential_variance(metric: ExperimentMetric, c: Level, t: Level) -> float:
    """The variance of the difference the sequential test mixes over. For rates, the pooled
    rate's (as the z-test's, under no effect): a variant at 0% or 100% has no spread of its
    own, which would make any difference look certain or none testable."""
    if metric.type in (MetricType.CONVERSION, MetricType.ERROR_RATE):
        pooled = (c.count + t.count) / (c.n + t.n)
        return pooled * (1 - pooled) * (1 / c.n + 1 / t.n)
    return c.variance / c.n + t.variance / t.n


def _harmful(metric: ExperimentMetric, difference: float) -> bool:
    return difference > 0 if metric.goal is Goal.DECREASE else difference < 0


def report(experiment: Experiment, weights: Mapping[str, int], tallies: Tallies,
           looks: Mapping[str, float], now: float) -> dict[str, Any]:
    """The report as plain data (the JSON of GET /admin/experiments/{name}).

    `weights`: the flag's variants and their weights, control among them. `looks`: for
    sequential experiments, the least always-valid p-value seen so far per
    "metric|variant"; the report says which new minima to keep in `looks` (its caller
    stores them), so p-values only ever fall, as mSPRT's running minimum must.
    """
    alpha = experiment.significance
    control = experiment.control
    variants = [v for v in weights if weights[v] > 0]
    treatments = [v for v in variants if v != control]
    units = {v: tallies.units.get(v, 0) for v in variants}
    srm_p = stats.sample_ratio_mismatch([units[v] for v in variants],
                                        [weights[v] for v in variants])
    new_looks: dict[str, float] = {}
    metrics: list[dict[str, Any]] = []
    tripped: list[dict[str, Any]] = []
    primary: dict[str, Any] | None = None
    for metric in experiment.metrics:
        levels = {v: _levels(metric, v, tallies) for v in variants}
        base = levels[control] if control in levels else Level(0, 0, 0, 0)
        rows: dict[str, dict[str, Any]] = {}
        raw: dict[str, float] = {}
        for v in treatments:
            found = _compare(metric, base, levels[v], alpha)
            if found is None:
                continue
            row: dict[str, Any] = {
                "difference": found.difference, "relative": found.relative,
                "interval": [found.low, found.high], "p_value": found.p_value}
            if experiment.sequential:
                variance = _sequential_variance(metric, base, levels[v])
                seq = stats.msprt(found.difference, variance, _tau(metric, base, levels[v]),
                                  alpha)
                key = f"{metric.name}|{v}"
                p = min(seq.p_value, looks.get(key, 1.0))
                if p < looks.get(key, 1.0):
                    new_looks[key] = p
                row.update(p_value=p, interval=[seq.low, seq.high], fixed_p_value=found.p_value)
            rows[v] = row
            raw[v] = row["p_value"]
        adjusted = dict(zip(raw, stats.holm(list(raw.values())), strict=True)) if len(raw) > 1 \
            else raw
        for v, row in rows.items():
            row["adjusted_p_value"] = adjusted[v]
            row["significant"] = adjusted[v] < alpha
            if metric.guardrail:
                # One-sided: only a move against the goal trips it.
                one_sided = adjusted[v] / 2 if _harmful(metric, row["difference"]) else 1.0
                row["harmful"] = one_sided < alpha
                if row["harmful"]:
                    tripped.append({"metric": metric.name, "variant": v,
                                    "difference": row["difference"], "p_value": one_sided})
        entry: dict[str, Any] = {
            "name": metric.name, "type": metric.type.value, "goal": metric.goal.value,
            "primary": metric.primary, "guardrail": metric.guardrail,
            "variants": {v: {"n": lv.n, "count": lv.count, "value": lv.value, **lv.extra,
                             **({"comparison": rows[v]} if v in rows else {})}
                         for v, lv in levels.items()},
        }
        if metric.route is not None:
            entry["route"] = metric.route
        if metric.type in (MetricType.CONVERSION, MetricType.MEAN):
            entry["unexposed_events"] = tallies.unexposed.get(metric.name, 0)
        if metric.primary:
            needed = None
            if metric.type is MetricType.CONVERSION and metric.baseline_rate is not None \
                    and metric.minimum_detectable_effect is not None:
                needed = stats.units_needed(metric.baseline_rate,
                                            metric.minimum_detectable_effect, alpha,
                                            experiment.power)
            entry["units_needed_per_variant"] = needed
            entry["progress"] = (min(min(units.values()) / needed, 1.0)
                                 if needed and units else None)
            primary = entry
        metrics.append(entry)

    verdict: dict[str, Any] = {"status": "collecting"}
    if tripped:
        verdict = {"status": "guardrail_tripped", "guardrails": tripped}
    elif srm_p < SRM_P:
        verdict = {"status": "srm"}
    elif primary is not None:
        significant = [(v, c["comparison"]) for v, c in primary["variants"].items()
                       if "comparison" in c and c["comparison"]["significant"]]
        if significant:
            best = min(significant, key=lambda item: item[1]["adjusted_p_value"])
            better = not _harmful(next(m for m in experiment.metrics if m.primary),
                                  best[1]["difference"])
            verdict = {"status": "significant", "variant": best[0],
                       "direction": "winner" if better else "loser"}
        elif primary["progress"] is not None and primary["progress"] >= 1.0:
            verdict = {"status": "no_effect"}
    return {
        "name": experiment.name, "flag": experiment.flag, "control": control,
        "lifecycle": tallies.state.get("status", experiment.status.value),
        "started": _number(tallies.state.get("started")),
        "ended": _number(tallies.state.get("ended")),
        "stopped_by_guardrail": tallies.state.get("tripped"),
        "significance": alpha, "power": experiment.power,
        "sequential": experiment.sequential, "auto_stop": experiment.auto_stop,
        **verdict,
        "units": units, "weights": {v: weights[v] for v in variants},
        "srm": {"p_value": srm_p, "mismatch": srm_p < SRM_P},
        "metrics": metrics, "generated": now, "new_looks": new_looks,
    }


def _number(text: str | None) -> float | None:
    return float(text) if text else None
