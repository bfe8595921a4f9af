"""The parsed configuration: frozen records built once at load and shared read-only.

Nothing here parses or validates: `gateway.config.parse` builds these records and reports
every problem with its file line, so the rest of the gateway can trust them.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FailureMode(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    LOCAL = "local"


class Algorithm(enum.StrEnum):
    TOKEN_BUCKET = "token_bucket"
    LEAKY_BUCKET = "leaky_bucket"
    SLIDING_WINDOW = "sliding_window"
    FIXED_WINDOW = "fixed_window"


class Action(enum.StrEnum):
    REJECT = "reject"
    DELAY = "delay"
    QUEUE = "queue"
    DEGRADE = "degrade"


class EscapedSlashes(enum.StrEnum):
    """What an encoded slash or backslash (%2F, %5C) in a request path gets."""

    KEEP = "keep"  # stays encoded and never separates segments
    REJECT = "reject"  # 400


class WhenAbsent(enum.StrEnum):
    """What a rule does for a request that lacks the value its scope counts per."""

    SKIP = "skip"  # the rule does not apply
    IP = "ip"  # counted per client IP instead
    REJECT = "reject"  # refused: the rule cannot count the request


class Bucketing(enum.StrEnum):
    """How flags bucket: flagd flag files' `fractional` and the gateway's own rollouts and
    splits (see gateway.flagd.operators)."""

    FLAGD_V2 = "flagd-v2"
    FLAGD_V3 = "flagd-v3"


class HeaderStyle(enum.StrEnum):
    IETF = "ietf"
    LEGACY = "legacy"
    BOTH = "both"
    NONE = "none"


class FlagStatus(enum.StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    COMPLETED = "completed"
    ARCHIVED = "archived"
    DEPRECATED = "deprecated"


class FlagType(enum.StrEnum):
    BOOLEAN = "boolean"
    PERCENTAGE = "percentage"
    MULTIVARIATE = "multivariate"
    OPERATIONAL = "operational"


class Operator(enum.StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    REGEX = "regex"
    SEMVER_EQ = "semver_eq"
    SEMVER_LT = "semver_lt"
    SEMVER_LTE = "semver_lte"
    SEMVER_GT = "semver_gt"
    SEMVER_GTE = "semver_gte"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    CIDR = "cidr"


class Priority(enum.StrEnum):
    """Admission classes, highest first: a higher class always leaves the queue first."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BULK = "bulk"


PRIORITIES = tuple(Priority)  # highest first; a class's index is its rank (0 = critical)


# Context fields a rule scope, a flag's bucket_by or a targeting attribute may name.
CONTEXT_FIELDS = (
    "client_ip", "user_id", "tenant_id", "role", "subscription_tier",
    "region", "segment", "device", "api_key",
)


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "0.0.0.0"
    port: int = 8080
    max_header_size: int = 16 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 30.0
    max_connections: int = 10_000
    merge_slashes: bool = True
    escaped_slashes: EscapedSlashes = EscapedSlashes.KEEP
    underscores_in_headers: bool = False


@dataclass(frozen=True, slots=True)
class Logging:
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    bad_request_lines_per_second: int = 10


@dataclass(frozen=True, slots=True)
class Admin:
    host: str = "127.0.0.1"
    port: int = 9901
    token_env: str | None = None


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    key_prefix: str = "gw:"
    timeout: float = 0.05
    failure_mode: FailureMode = FailureMode.OPEN
    max_connections: int = 64  # one Redis: the pool's size
    max_connections_per_node: int = 16  # a cluster: each node's, whatever the load


@dataclass(frozen=True, slots=True)
class HeaderSource:
    header: str
    default: str | None = None


@dataclass(frozen=True, slots=True)
class ContextSettings:
    trusted_proxies: tuple[IPNetwork, ...] = ()
    client_ip: HeaderSource = HeaderSource("X-Forwarded-For")
    # Every identity field, keyed by context field name (user_id, tenant_id, ...).
    fields: dict[str, HeaderSource] = field(default_factory=dict)
    attributes: dict[str, HeaderSource] = field(default_factory=dict)
    # Subscription tier -> classes to move a request up (+) or down (-) from its route's.
    priority_by_tier: dict[str, int] = field(default_factory=dict)


# Keyed by the class's name as plain text (the admin API serialises config records).
DEFAULT_MAX_WAIT = {"critical": 2.0, "high": 1.0, "normal": 0.5, "low": 0.2, "bulk": 0.1}


@dataclass(frozen=True, slots=True)
class Admission:
    """An upstream's limit on requests in flight and the priority queue in front of it.

    `max_concurrency` None: adaptive, between `min` and `max`; these are for the whole
    instance, split among its workers."""

    max_concurrency: int | None = None
    min: int = 1
    max: int = 1000
    queue_size: int = 1000
    max_wait: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_WAIT))
    target_delay: float = 0.02
    interval: float = 0.1


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    connect_timeout: float = 2.0
    timeout: float = 30.0
    max_connections: int = 256
    admission: Admission | None = None


@dataclass(frozen=True, slots=True)
class TierOverride:
    limit: int | None = None
    burst: int | None = None
    window: float | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    """What a rule counts per: `kind` is global|tenant|user|ip|api_key|attribute."""

    kind: Literal["global", "tenant", "user", "ip", "api_key", "attribute"]
    attribute: str | None = None

    def __str__(self) -> str:
        return f"attribute:{self.attribute}" if self.kind == "attribute" else self.kind


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    name: str
    algorithm: Algorithm
    scope: Scope
    limit: int
    window: float
    burst: int = 0
    action: Action = Action.REJECT
    max_wait: float = 0.0
    queue_size: int = 1000
    tiers: dict[str, TierOverride] = field(default_factory=dict)
    degrade_upstream: str | None = None
    shadow: bool = False
    when_absent: WhenAbsent = WhenAbsent.SKIP
    shards: int = 1
    lease: int = 0  # units a process takes per decision and spends locally; 0: off
    lease_ttl: float = 1.0  # seconds a process may spend them


@dataclass(frozen=True, slots=True)
class AssetPolicy:
    """Edge and browser lifetimes for responses of some media types (`cache.asset_policies`)."""

    types: tuple[str, ...]                 # media ranges: "text/css", "image/*"
    ttl: float | None = None
    browser_ttl: float | None = None
    override: bool = False                 # wins over the response's own freshness too


@dataclass(frozen=True, slots=True)
class CacheSettings:
    memory_max: int = 64 * 1024**2
    max_object_size: int = 8 * 1024**2
    redis: bool = False
    asset_policies: tuple[AssetPolicy, ...] = ()
    immutable_paths: re.Pattern[str] | None = None


class Encoding(enum.StrEnum):
    """Content codings the gateway produces (RFC 9110 §8.4.1, RFC 7932, RFC 8878)."""

    ZSTD = "zstd"
    BR = "br"
    GZIP = "gzip"


LEVELS: dict[Encoding, tuple[int, int]] = {  # what each library accepts
    Encoding.ZSTD: (1, 22), Encoding.BR: (0, 11), Encoding.GZIP: (1, 9)}
DEFAULT_LEVELS: dict[Encoding, int] = {Encoding.ZSTD: 3, Encoding.BR: 5, Encoding.GZIP: 6}
DEFAULT_COMPRESSIBLE = ("text/*", "application/json", "application/javascript",
                        "application/xml", "image/svg+xml")


@dataclass(frozen=True, slots=True)
class Compression:
    """The `compression` block: how responses to clients are compressed."""

    encodings: tuple[Encoding, ...] = (Encoding.ZSTD, Encoding.BR, Encoding.GZIP)
    min_size: int = 1024
    types: tuple[str, ...] = DEFAULT_COMPRESSIBLE
    level: dict[Encoding, int] = field(default_factory=lambda: dict(DEFAULT_LEVELS))


class RouteCompression(enum.StrEnum):
    """A route's `compression`: on, off, or on even beside secrets (BREACH, README)."""

    ON = "true"
    OFF = "false"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class RouteCache:
    ttl: float | None = None
    override: bool = False
    browser_ttl: float | None = None
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    ignore_query: tuple[str, ...] = ()
    tags_header: str | None = None
    store_set_cookie: bool = False


@dataclass(frozen=True, slots=True)
class FlagHeaders:
    prefix: str = "X-Flag-"
    summary: str | None = "X-Feature-Flags"


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    value: Any
    weight: int


@dataclass(frozen=True, slots=True)
class TargetRule:
    attribute: str
    operator: Operator
    values: tuple[Any, ...]
    # Parsed forms of `values`, ready for the operator (compiled regexes, networks, semvers).
    compiled: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Flag:
    key: str
    type: FlagType = FlagType.BOOLEAN
    default: Any = False
    status: FlagStatus = FlagStatus.ACTIVE
    description: str = ""
    owner: str = ""
    rollout: float | None = None
    bucket_by: str | None = None
    environments: dict[str, Any] = field(default_factory=dict)
    tiers: tuple[str, ...] | None = None
    expires: dt.date | None = None
    variants: tuple[Variant, ...] = ()
    prerequisites: tuple[str, ...] = ()
    targeting: tuple[TargetRule, ...] = ()
    kill_switch: bool = False


class MetricType(enum.StrEnum):
    CONVERSION = "conversion"  # share of units with at least one event
    MEAN = "mean"  # per-unit sum of the events' values (revenue per user)
    ERROR_RATE = "error_rate"  # share of the experiment's flagged requests answered 5xx
    LATENCY = "latency"  # upstream duration of the experiment's flagged requests


class Goal(enum.StrEnum):
    INCREASE = "increase"
    DECREASE = "decrease"


class ExperimentStatus(enum.StrEnum):
    DRAFT = "draft"
    RUNNING = "running"  # the only status that records
    PAUSED = "paused"
    COMPLETED = "completed"  # the report is frozen


@dataclass(frozen=True, slots=True)
class ExperimentMetric:
    name: str
    type: MetricType = MetricType.CONVERSION
    goal: Goal = Goal.INCREASE
    primary: bool = False
    guardrail: bool = False
    baseline_rate: float | None = None
    minimum_detectable_effect: float | None = None
    # Measured by the gateway: a request of an exposed unit to `route` answered with a
    # status in `statuses` is an event of this metric.
    route: str | None = None
    statuses: tuple[int, int] | None = None  # [low, high) of the status codes that count


@dataclass(frozen=True, slots=True)
class FlagSource:
    """A flagd flag-definition file: `file` as written, `path` resolved against the config."""

    file: str
    path: str


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    flag: str
    control: str
    status: ExperimentStatus = ExperimentStatus.DRAFT
    significance: float = 0.05
    power: float = 0.8
    sequential: bool = False
    auto_stop: bool = False
    metrics: tuple[ExperimentMetric, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    path: str | None = None
    path_prefix: str | None = None
    path_regex: re.Pattern[str] | None = None
    methods: frozenset[str] | None = None
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamRef:
    """Which upstream serves a route; `read` takes GET/HEAD/OPTIONS, `write` the rest."""

    read: str
    write: str

    def for_method(self, method: str) -> str:
        return self.read if method in ("GET", "HEAD", "OPTIONS") else self.write


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: Match
    upstream: UpstreamRef
    strip_prefix: str | None = None
    rate_limits: tuple[str, ...] = ()
    cost: int = 1
    max_body: int | None = None
    cache: RouteCache | None = None
    flags: tuple[str, ...] = ()
    # `flags: all`: `flags` lists the file's flags, and flags created at run time apply too.
    all_flags: bool = False
    priority: Priority = Priority.NORMAL
    compression: RouteCompression = RouteCompression.ON


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    environment: str = "production"
    listen: Listen = Listen()
    workers: int = 1
    drain_timeout: float = 15.0
    logging: Logging = Logging()
    admin: Admin = Admin()
    redis: RedisSettings | None = None
    context: ContextSettings = ContextSettings()
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    rate_limit_headers: HeaderStyle = HeaderStyle.IETF
    rate_limits: dict[str, RateLimitRule] = field(default_factory=dict)
    rate_limits_local_max_keys: int = 100_000
    cache: CacheSettings = CacheSettings()
    compression: Compression | None = None  # None: responses go out as the upstream wrote them
    flag_headers: FlagHeaders = FlagHeaders()
    flags: dict[str, Flag] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    flag_sources: tuple[FlagSource, ...] = ()
    # The flags of every flag source, by key (gateway.flagd.FlagdFlag records).
    flagd_flags: dict[str, Any] = field(default_factory=dict)
    flag_bucketing: Bucketing = Bucketing.FLAGD_V2
    ofrep: bool = True

    def summary(self) -> str:
        return (
            f"{len(self.routes)} routes, {len(self.upstreams)} upstreams, "
            f"{len(self.rate_limits)} rate-limit rules, {len(self.flags)} flags, "
            f"{len(self.experiments)} experiments, workers={self.workers}, "
            f"redis={'on' if self.redis else 'off'}"
        )
