"""prometheus-client's value holders, written directly by the per-loop-turn tally.

The public `inc`, `set` and `observe` add argument and exemplar checks and, for a
histogram, a walk over every bucket, around the same value-holder calls; the tally applies
a loop turn's worth of requests at once (gateway/metrictally.py) and goes straight to the
holders: a metric child's `_value` (Counter, Gauge), and a histogram child's
`_upper_bounds`, `_buckets` and `_sum`. The probe below applies known amounts through
these functions and reads them back through the public `collect()`.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gateway.wire import need


def inc_value(child: Any, amount: float) -> None:
    """`child.inc(amount)` for a Counter or Gauge child."""
    child._value.inc(amount)


def set_value(child: Any, value: float) -> None:
    """`child.set(value)` for a Gauge child."""
    child._value.set(value)


def observe_many(child: Any, amounts: Sequence[float]) -> None:
    """What `child.observe(a) for a in amounts` does, with one increment per bucket."""
    bounds: list[float] = child._upper_bounds
    buckets = child._buckets
    if len(amounts) == 1:  # the usual case: a loop turn finishes one request
        amount = amounts[0]
        buckets[bisect_left(bounds, amount)].inc(1)  # first bucket with amount <= bound
        child._sum.inc(amount)
        return
    # Only the buckets hit: walking all sixteen cost more than the increments themselves.
    counts: dict[int, int] = {}
    for amount in amounts:
        i = bisect_left(bounds, amount)  # first bucket with amount <= bound
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        buckets[i].inc(n)
    child._sum.inc(sum(amounts))


# ---------------------------------------------------------------------------- probes
def _samples(metric: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metric.collect() for s in family.samples}


def _multiprocess() -> bool:
    """In multiprocess mode every metric made, even unregistered, is written to the shared
    files that /metrics sums: the probe then makes none of its own."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@need("prometheus-client", "Counter/Gauge child ._value.inc/.set, Histogram child "
                           "._upper_bounds, ._buckets[i].inc, ._sum.inc")
def _value_holders() -> None:
    if _multiprocess():
        from gateway import metrics  # made in every process anyway: nothing new is written

        for holder in (metrics.INFLIGHT._value, metrics.REDIS_ERRORS._value):
            if not (callable(holder.inc) and callable(holder.set) and callable(holder.get)):
                raise AttributeError("a value holder lacks inc/set/get")
        return
    counter = Counter("wire_probe", "probe", registry=None)
    inc_value(counter, 2)
    gauge = Gauge("wire_probe_gauge", "probe", registry=None)
    set_value(gauge, 7)
    histogram = Histogram("wire_probe_seconds", "probe", buckets=(1.0, 2.0), registry=None)
    observe_many(histogram, [0.5])
    observe_many(histogram, [1.0, 1.5, 3.0])
    got = {**_samples(counter), **_samples(gauge), **_samples(histogram)}
    want = {
        ("wire_probe_total", ()): 2.0,
        ("wire_probe_gauge", ()): 7.0,
        ("wire_probe_seconds_bucket", (("le", "1.0"),)): 2.0,
        ("wire_probe_seconds_bucket", (("le", "2.0"),)): 3.0,
        ("wire_probe_seconds_bucket", (("le", "+Inf"),)): 4.0,
        ("wire_probe_seconds_count", ()): 4.0,
        ("wire_probe_seconds_sum", ()): 6.0,
    }
    wrong = {key: (got.get(key), value) for key, value in want.items() if got.get(key) != value}
    if wrong:
        raise ValueError(f"read back (got, expected): {wrong}")


__all__ = ["inc_value", "observe_many", "set_value"]
