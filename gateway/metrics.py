"""Prometheus families, defined once. Children for routes and rules are made at config load.

With several workers the supervisor sets PROMETHEUS_MULTIPROC_DIR before any worker starts,
and prometheus-client then writes every worker's numbers to files that `/metrics` sums.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# From half a millisecond (a cache hit) to 30 s (the default upstream timeout).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

REQUESTS = Counter(
    "gateway_requests", "Requests answered, by route, method and status.",
    ("route", "method", "status"),
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds", "Time from request to response headers and body sent.",
    ("route",), buckets=LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_duration_seconds", "Time until the upstream's response headers arrived.",
    ("route", "upstream"), buckets=LATENCY_BUCKETS,
)
RATELIMIT_DECISIONS = Counter(
    "gateway_ratelimit_decisions", "Rate-limit decisions by rule and outcome.",
    ("rule", "outcome"),
)
CACHE_LOOKUPS = Counter(
    "gateway_cache_lookups", "Cache lookups by route and result.", ("route", "result"),
)
FLAG_EVALUATIONS = Counter(
    "gateway_flag_evaluations", "Flag evaluations by flag, variant and reason.",
    ("flag", "variant", "reason"),
)
COMPRESSION_BYTES = Counter(
    "gateway_compression_bytes", "Response bytes before (stage=in) and after (stage=out) "
    "the gateway's content coding, by the coding served.", ("encoding", "stage"),
)
REDIS_ERRORS = Counter("gateway_redis_errors", "Redis calls that failed or timed out.")
INFLIGHT = Gauge(
    "gateway_inflight_requests", "Requests being handled right now.",
    multiprocess_mode="livesum",
)
RATELIMIT_LOCAL_EVICTIONS = Counter(
    "gateway_ratelimit_local_evictions",
    "Keys the in-process rate-limit store forgot because it held rate_limits_local_max_keys "
    "keys (least recently used first).",
)
CONFIG_RELOADS = Counter(
    "gateway_config_reloads", "Configuration reloads by result.", ("result",),
)
EXPERIMENT_DROPPED = Counter(
    "gateway_experiment_dropped",
    "Experiment records dropped: the queue was full or the store refused a batch.",
)
EXPERIMENT_GUARDRAIL_TRIPS = Counter(
    "gateway_experiment_guardrail_trips",
    "Guardrails that moved significantly against their goal, by experiment and metric.",
    ("experiment", "metric"),
)
BAD_REQUESTS = Counter(
    "gateway_bad_requests", "Requests refused before routing (malformed, unsupported version, "
    "too slow), by reason.", ("reason",),
)
# Admission control. With several workers the gauges sum over them (each worker holds its
# share of the limit), except saturation: the busiest worker's, as a ratio cannot be summed.
ADMISSION_INFLIGHT = Gauge(
    "gateway_admission_inflight", "Requests holding an admission permit, by upstream.",
    ("upstream",), multiprocess_mode="livesum",
)
ADMISSION_LIMIT = Gauge(
    "gateway_admission_limit", "Requests an upstream may have in flight at once.",
    ("upstream",), multiprocess_mode="livesum",
)
ADMISSION_QUEUE_DEPTH = Gauge(
    "gateway_admission_queue_depth", "Requests waiting for an admission permit.",
    ("upstream", "priority"), multiprocess_mode="livesum",
)
ADMISSION_WAIT = Histogram(
    "gateway_admission_wait_seconds", "Time from arrival to admission permit (0: none waited).",
    ("upstream", "priority"), buckets=LATENCY_BUCKETS,
)
# Sheds in under 5 ms are the design (a refusal at arrival costs the client a round trip);
# this says how many came later, from the queue, and how late.
ADMISSION_SHED_WAIT = Histogram(
    "gateway_admission_shed_wait_seconds",
    "Time a shed request waited in the queue before its 503 (0: shed at arrival).",
    ("upstream", "priority"), buckets=LATENCY_BUCKETS,
)
ADMISSION_SHED = Counter(
    "gateway_admission_shed", "Requests answered 503 by admission control, and why.",
    ("upstream", "priority", "reason"),
)
UPSTREAM_SATURATION = Gauge(
    "gateway_upstream_saturation", "Requests in flight over the admission limit (0-1).",
    ("upstream",), multiprocess_mode="livemax",
)



class Children:
    """A family's label children, memoised by label values.

    prometheus-client's `labels()` validates the values and takes a lock on every call; on
    the proxy path that was a measurable share of each request (tests/perf/bench_proxy.py),
    so the pipeline asks this instead. Label sets stay bounded: routes, upstreams, the
    METHODS below and HTTP status codes.
    """

    def __init__(self, family: Counter | Histogram) -> None:
        self.family = family
        self.known: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.known.get(values)
        if child is None:
            child = self.known[values] = self.family.labels(*values)
        return child


REQUESTS_BY = Children(REQUESTS)
REQUEST_DURATION_BY = Children(REQUEST_DURATION)
FLAG_EVALUATIONS_BY = Children(FLAG_EVALUATIONS)
UPSTREAM_DURATION_BY = Children(UPSTREAM_DURATION)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER")


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def render() -> bytes:
    """The text exposition; summed over every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)
