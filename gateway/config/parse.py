"""From YAML to `Config`: every key checked, every reference resolved, every error reported.

Flag definitions are parsed by `parse_flag`, which the admin API calls too, so a flag changed
at run time passes exactly the checks a flag in the file does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from gateway.config import model as m
from gateway.config.flagsources import parse_flag_sources
from gateway.config.reader import (
    ConfigError,
    ConfigIssue,
    Reader,
    Section,
    any_value,
    boolean,
    choice,
    integer,
    number,
    string,
    string_list,
)
from gateway.config.yamlsrc import load_yaml
from gateway.semver import parse_semver
from gateway.target import BadTarget, TargetRules, canonical_path
from gateway.units import parse_duration, parse_size

TOP_KEYS = (
    "environment", "listen", "workers", "drain_timeout", "logging", "admin", "redis",
    "context", "upstreams", "rate_limit_headers", "rate_limits", "rate_limits_local_max_keys",
    "cache", "compression", "flag_headers",
    "flags", "experiments", "routes",
    "flag_sources", "flag_bucketing", "ofrep",
)
MAX_SHARD_TURNS = 1024  # prepared decisions per combination of a route with sharded rules
RULE_KEYS = (
    "algorithm", "scope", "limit", "window", "burst", "action", "max_wait", "queue_size",
    "tiers", "degrade_upstream", "shadow", "when_absent", "shards", "lease", "lease_ttl",
)
LISTEN_KEYS = (
    "host", "port", "max_header_size", "header_timeout", "idle_timeout", "body_timeout",
    "max_connections", "merge_slashes", "escaped_slashes", "underscores_in_headers",
)
LOGGING_KEYS = ("level", "access_log", "bad_request_lines_per_second")
FLAG_KEYS = (
    "description", "owner", "status", "type", "default", "rollout", "bucket_by",
    "environments", "tiers", "expires", "variants", "prerequisites", "targeting", "kill_switch",
)
ADMISSION_KEYS = (
    "max_concurrency", "min", "max", "queue_size", "max_wait", "target_delay", "interval",
)
ROUTE_CACHE_KEYS = (
    "ttl", "override", "browser_ttl", "stale_while_revalidate", "stale_if_error",
    "ignore_query", "tags_header", "store_set_cookie",
)
CACHE_KEYS = ("memory_max", "max_object_size", "redis", "asset_policies", "immutable_paths")
ASSET_POLICY_KEYS = ("types", "ttl", "browser_ttl", "override")
COMPRESSION_KEYS = ("encodings", "min_size", "types", "level")
ROUTE_COMPRESSION = ("true", "false", "always")
_MEDIA_RANGE = re.compile(r"^[a-z0-9!#$&^_.+\-]+/(\*|[a-z0-9!#$&^_.+\-]+)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def duration(value: object) -> float:
    return parse_duration(value)


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0, got {value!r}")
    return seconds


def size(value: object) -> int:
    return parse_size(value)


def header_name(value: object) -> str:
    text = string(value)
    if not _HEADER_NAME.match(text):
        raise ValueError(f"not a valid header field name: {text!r}")
    return text


def name_token(value: object) -> str:
    text = string(value)
    if not _NAME.match(text):
        raise ValueError(f"names may use letters, digits, '_', '-' and '.', got {text!r}")
    return text


def network(value: object) -> m.IPNetwork:
    try:
        return ipaddress.ip_network(string(value), strict=False)
    except ValueError:
        raise ValueError(f"not an IP network in CIDR form: {value!r}") from None


def redis_url(value: object) -> str:
    text = string(value)
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return text


def http_url(value: object) -> str:
    text = string(value)
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", text):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"expected a date as YYYY-MM-DD, got {value!r}")


# ---------------------------------------------------------------- sections

def parse_listen(s: Section | None) -> m.Listen:
    if s is None:
        return m.Listen()
    return m.Listen(
        host=s.get("host", string, "0.0.0.0"),
        port=s.get("port", integer(0, 65535), 8080),
        max_header_size=s.get("max_header_size", size, 16 * 1024),
        header_timeout=s.get("header_timeout", positive_duration, 10.0),
        idle_timeout=s.get("idle_timeout", positive_duration, 60.0),
        body_timeout=s.get("body_timeout", positive_duration, 30.0),
        max_connections=s.get("max_connections", integer(1, 1_000_000), 10_000),
        merge_slashes=s.get("merge_slashes", boolean, True),
        escaped_slashes=m.EscapedSlashes(
            s.get("escaped_slashes", choice(list(m.EscapedSlashes)), "keep") or "keep"),
        underscores_in_headers=s.get("underscores_in_headers", boolean, False),
    )


def parse_logging(s: Section | None) -> m.Logging:
    if s is None:
        return m.Logging()
    return m.Logging(
        level=s.get("level", choice(("debug", "info", "warning", "error")), "info"),
        access_log=s.get("access_log", boolean, True),
        bad_request_lines_per_second=s.get("bad_request_lines_per_second",
                                           integer(0, 1_000_000), 10),
    )


def parse_admin(s: Section | None) -> m.Admin:
    if s is None:
        return m.Admin()
    return m.Admin(
        host=s.get("host", string, "127.0.0.1"),
        port=s.get("port", integer(0, 65535), 9901),
        token_env=s.get("token_env", string, None),
    )


def parse_redis(s: Section | None) -> m.RedisSettings | None:
    if s is None:
        return None
    settings = m.RedisSettings(
        url=s.get("url", redis_url, "redis://127.0.0.1:6379/0"),
        cluster=s.get("cluster", boolean, False),
        key_prefix=s.get("key_prefix", any_value, "gw:"),
        timeout=s.get("timeout", positive_duration, 0.05),
        failure_mode=m.FailureMode(s.get("failure_mode", choice(list(m.FailureMode)), "open")
                                   or "open"),
        max_connections=s.get("max_connections", integer(1, 100_000), 64),
        max_connections_per_node=s.get("max_connections_per_node", integer(1, 100_000), 16),
    )
    if settings.cluster and settings.url and _database(settings.url) not in ("", "0"):
        s.error("url", f"a Redis Cluster has only database 0, the URL selects "
                       f"{_database(settings.url)}; end it with /0 or no path")
    return settings


def _database(url: str) -> str:
    """The database a redis:// URL selects ('' when it names none)."""
    return urllib.parse.urlsplit(url).path.strip("/")


def _header_source(r: Reader, value: object, path: str, line: int) -> m.HeaderSource | None:
    s = r.section(value, path, line, ("header", "default"))
    if s is None:
        return None
    default = s.get("default", any_value, None)
    return m.HeaderSource(
        header=s.get("header", header_name),
        default=None if default is None else str(default),
    )


def parse_context(r: Reader, s: Section | None) -> m.ContextSettings:
    if s is None:
        return m.ContextSettings()
    trusted: list[m.IPNetwork] = []
    for _, value, path, line in s.elements("trusted_proxies"):
        try:
            trusted.append(network(value))
        except ValueError as exc:
            r.error(line, path, str(exc))
    client_ip = m.HeaderSource("X-Forwarded-For")
    fields: dict[str, m.HeaderSource] = {}
    for key in m.CONTEXT_FIELDS:
        if key in s:
            source = _header_source(r, s.data[key], s.child(key), s.line_of(key))
            if source is None:
                continue
            if key == "client_ip":
                client_ip = source
            else:
                fields[key] = source
    attributes: dict[str, m.HeaderSource] = {}
    for name, value, path, line in s.items("attributes"):
        source = _header_source(r, value, path, line)
        if source is not None:
            attributes[name] = source
    moves: dict[str, int] = {}
    for tier, value, path, line in s.items("priority_by_tier"):
        try:
            moves[tier] = class_steps(value)
        except ValueError as exc:
            r.error(line, path, str(exc))
    if moves and "subscription_tier" not in fields:
        s.error("priority_by_tier", "needs context.subscription_tier, which says each "
                "request's tier")
    return m.ContextSettings(tuple(trusted), client_ip, fields, attributes, moves)


def class_steps(value: object) -> int:
    """How many priority classes a tier moves its requests: +1 up, -1 down."""
    limit = len(m.PRIORITIES) - 1
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())
    return integer(-limit, limit)(value)


def parse_admission(r: Reader, s: Section | None, workers: int) -> m.Admission | None:
    if s is None:
        return None
    raw = s.data.get("max_concurrency")
    fixed: int | None = None
    if raw == "adaptive":
        pass
    elif raw is None:
        s.error("max_concurrency" if "max_concurrency" in s else None,
                "max_concurrency is required: a number, or adaptive")
    elif isinstance(raw, str):
        s.error("max_concurrency", f"expected a whole number or adaptive, got {raw!r}")
    else:
        fixed = s.get("max_concurrency", integer(1, 1_000_000))
    if raw != "adaptive":
        for key in ("min", "max"):
            if key in s:
                s.error(key, "applies only to max_concurrency: adaptive")
    low = s.get("min", integer(1, 1_000_000), 1) or 1
    high = s.get("max", integer(1, 1_000_000), 1000) or 1000
    if low > high:
        s.error("min", f"min ({low}) is larger than max ({high})")
    if (fixed or low) < workers:
        s.error("max_concurrency" if fixed else "min",
                f"{fixed or low} is less than workers ({workers}): the limit is split among "
                "the workers and each needs at least 1")
    waits = dict(m.DEFAULT_MAX_WAIT)
    for name, value, path, line in s.items("max_wait"):
        if name not in m.PRIORITIES:
            r.error(line, path, f"unknown priority class {name!r}; classes are "
                    + ", ".join(m.PRIORITIES) + _hint(name, dict.fromkeys(map(str, m.PRIORITIES))))
            continue
        try:
            waits[name] = duration(value)
        except ValueError as exc:
            r.error(line, path, str(exc))
    return m.Admission(
        max_concurrency=fixed,
        min=low,
        max=high,
        queue_size=s.get("queue_size", integer(0, 1_000_000), 1000),
        max_wait=waits,
        target_delay=s.get("target_delay", positive_duration, 0.02),
        interval=s.get("interval", positive_duration, 0.1),
    )


def parse_upstream(r: Reader, name: str, value: object, path: str, line: int,
                   workers: int = 1) -> m.Upstream:
    s = r.section(value, path, line, ("url", "connect_timeout", "timeout", "max_connections",
                                      "admission"))
    if s is None:
        return m.Upstream(name, "")
    return m.Upstream(
        name=name,
        url=s.get("url", http_url),
        connect_timeout=s.get("connect_timeout", positive_duration, 2.0),
        timeout=s.get("timeout", positive_duration, 30.0),
        max_connections=s.get("max_connections", integer(1, 100_000), 256),
        admission=parse_admission(r, s.section("admission", ADMISSION_KEYS), workers)
        if s.data.get("admission") is not None else None,
    )


def scope(value: object) -> m.Scope:
    text = string(value)
    if text in ("global", "tenant", "user", "ip", "api_key"):
        return m.Scope(text)  # type: ignore[arg-type]
    if text.startswith("attribute:") and len(text) > len("attribute:"):
        return m.Scope("attribute", text.removeprefix("attribute:"))
    raise ValueError(
        f"must be one of global, tenant, user, ip, api_key, attribute:<name>; got {text!r}"
    )


def parse_rule(r: Reader, name: str, value: object, path: str, line: int) -> m.RateLimitRule:
    s = r.section(value, path, line, RULE_KEYS)
    if s is None:
        return m.RateLimitRule(name, m.Algorithm.TOKEN_BUCKET, m.Scope("global"), 1, 1.0)
    algorithm = s.get("algorithm", choice(list(m.Algorithm)))
    action = s.get("action", choice(list(m.Action)), "reject")
    tiers: dict[str, m.TierOverride] = {}
    for tier, tvalue, tpath, tline in s.items("tiers"):
        t = r.section(tvalue, tpath, tline, ("limit", "burst", "window"))
        if t is None:
            continue
        if not t.data:
            t.error(None, "a tier override must change limit, burst or window")
        tiers[tier] = m.TierOverride(
            limit=t.get("limit", integer(1), None),
            burst=t.get("burst", integer(0), None),
            window=t.get("window", positive_duration, None),
        )
    max_wait = s.get("max_wait", duration, None)
    if max_wait is not None and action not in ("delay", "queue"):
        s.error("max_wait", f"applies only to action delay or queue, not {action}")
    if action in ("delay", "queue") and max_wait is None:
        max_wait = 1.0
    if "queue_size" in s and action != "queue":
        s.error("queue_size", "applies only to action queue")
    rule_scope = s.get("scope", scope)
    if "when_absent" in s and rule_scope is not None and rule_scope.kind in ("global", "ip"):
        s.error("when_absent", f"a {rule_scope.kind} rule always has its value; when_absent "
                "applies to rules scoped by user, tenant, api_key or an attribute")
    degrade = s.get("degrade_upstream", string, None)
    if degrade is not None and action != "degrade":
        s.error("degrade_upstream", f"applies only to action degrade, not {action}")
    limit, burst = s.get("limit", integer(1)), s.get("burst", integer(0), 0)
    shards = s.get("shards", integer(1, 1024), 1) or 1
    _check_shards(s, shards, algorithm, limit, burst or 0, tiers)
    lease = s.get("lease", integer(2, 1_000_000), 0)
    lease_ttl = s.get("lease_ttl", positive_duration, None)
    if lease_ttl is not None and not lease:
        s.error("lease_ttl", "applies only with lease")
    if lease and shards > 1:
        # A process leases per combination of shards it draws, so it would hold a lease on
        # every shard: up to shards x (lease - 1) units over the limit per process, each
        # lease taken from a shard's share of the quota.
        s.error("lease", f"a rule with shards ({shards}) cannot also have a lease: both "
                "spread a hot rule's load (shards over the cluster's masters, a lease over "
                "a process's requests), and together a process would hold a lease on every "
                "shard, shards x (lease - 1) units over the limit; keep one of them")
    return m.RateLimitRule(
        name=name,
        algorithm=m.Algorithm(algorithm) if algorithm else m.Algorithm.TOKEN_BUCKET,
        scope=rule_scope,
        limit=limit,
        window=s.get("window", positive_duration),
        burst=burst,
        action=m.Action(action or "reject"),
        max_wait=max_wait or 0.0,
        queue_size=s.get("queue_size", integer(1, 1_000_000), 1000),
        tiers=tiers,
        degrade_upstream=degrade,
        shadow=s.get("shadow", boolean, False),
        when_absent=m.WhenAbsent(
            s.get("when_absent", choice(list(m.WhenAbsent)), "skip") or "skip"),
        shards=shards,
        lease=lease or 0,
        lease_ttl=lease_ttl if lease_ttl is not None else 1.0,
    )


def _check_shards(s: Section, shards: int, algorithm: str | None, limit: int | None,
                  burst: int, tiers: Mapping[str, m.TierOverride]) -> None:
    """Every shard needs a rate of at least one unit per window, and a leaky bucket's shard
    a capacity of at least one unit (its capacity is burst + 1)."""
    if shards == 1 or limit is None:
        return
    for where, t_limit, t_burst in [("", limit, burst), *(
            (f" (tier {name})", t.limit or limit, burst if t.burst is None else t.burst)
            for name, t in tiers.items())]:
        if t_limit < shards:
            s.error("shards", f"{shards} shards need a limit of at least {shards}{where}: "
                    f"each shard gets limit/shards units, here {t_limit}")
            return
        if algorithm == "leaky_bucket" and t_burst + 1 < shards:
            s.error("shards", f"{shards} shards of a leaky bucket need a burst of at least "
                    f"{shards - 1}{where}: each shard holds (burst + 1)/shards units, "
                    f"here burst is {t_burst}")
            return


def _largest_admission(rule: m.RateLimitRule) -> int:
    """The largest cost any tier of the rule admits at once (leaky bucket: burst + 1); of a
    sharded rule, what its smallest shard admits (a request may draw any shard)."""
    def units(limit: int | None, burst: int | None) -> int:
        limit, burst = limit or rule.limit, rule.burst if burst is None else burst
        n = rule.shards  # too many shards for the units is an error of its own: say it once
        if rule.algorithm is m.Algorithm.LEAKY_BUCKET:
            return max(1, (burst + 1) // n)
        return max(1, limit // n) + burst // n

    return max([units(rule.limit, rule.burst),
                *(units(t.limit, t.burst) for t in rule.tiers.values())])


def media_ranges(value: object) -> tuple[str, ...]:
    """Media types or `type/*` ranges, lower-cased (media types are case-insensitive)."""
    ranges = tuple(t.strip().lower() for t in string_list(value))
    for text in ranges:
        if not _MEDIA_RANGE.match(text):
            raise ValueError(f"{text!r} is no media type or range (type/subtype or type/*)")
    return ranges


def pattern(value: object) -> re.Pattern[str]:
    try:
        return re.compile(string(value))
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None


def parse_asset_policy(r: Reader, value: object, path: str, line: int) -> m.AssetPolicy:
    s = r.section(value, path, line, ASSET_POLICY_KEYS)
    if s is None:
        return m.AssetPolicy(types=())
    policy = m.AssetPolicy(
        types=s.get("types", media_ranges) or (),
        ttl=s.get("ttl", duration, None),
        browser_ttl=s.get("browser_ttl", duration, None),
        override=s.get("override", boolean, False),
    )
    if policy.ttl is None and policy.browser_ttl is None:
        s.error(None, "needs a ttl, a browser_ttl or both: a policy without either does nothing")
    return policy


def parse_cache(r: Reader, s: Section | None) -> m.CacheSettings:
    if s is None:
        return m.CacheSettings()
    return m.CacheSettings(
        memory_max=s.get("memory_max", size, 64 * 1024**2),
        max_object_size=s.get("max_object_size", size, 8 * 1024**2),
        redis=s.get("redis", boolean, False),
        asset_policies=tuple(parse_asset_policy(r, value, path, line)
                             for _, value, path, line in s.elements("asset_policies")),
        immutable_paths=s.get("immutable_paths", pattern, None),
    )


def parse_compression(r: Reader, s: Section | None) -> m.Compression | None:
    if s is None:
        return None
    names = [str(e) for e in m.Encoding]

    def encodings(value: object) -> tuple[m.Encoding, ...]:
        found = [choice(names)(item) for item in string_list(value)]
        if len(set(found)) != len(found):
            raise ValueError("lists an encoding twice")
        return tuple(m.Encoding(name) for name in found)

    levels = dict(m.DEFAULT_LEVELS)
    for name, value, path, line in s.items("level"):
        if name not in names:
            hint = _hint(name, {n: 0 for n in names})
            r.error(line, path, f"unknown encoding {name!r}{hint or f' (one of {names})'}")
            continue
        low, high = m.LEVELS[m.Encoding(name)]
        try:
            levels[m.Encoding(name)] = integer(low, high)(value)
        except ValueError as exc:
            r.error(line, path, f"{exc} ({name} levels run from {low} to {high})")
    return m.Compression(
        encodings=s.get("encodings", encodings, m.Compression().encodings) or (),
        min_size=s.get("min_size", size, 1024) or 0,
        types=s.get("types", media_ranges, m.DEFAULT_COMPRESSIBLE) or (),
        level=levels,
    )


def parse_route_cache(s: Section | None) -> m.RouteCache | None:
    if s is None:
        return None
    return m.RouteCache(
        ttl=s.get("ttl", duration, None),
        override=s.get("override", boolean, False),
        browser_ttl=s.get("browser_ttl", duration, None),
        stale_while_revalidate=s.get("stale_while_revalidate", duration, 0.0),
        stale_if_error=s.get("stale_if_error", duration, 0.0),
        ignore_query=s.get("ignore_query", string_list, ()),
        tags_header=s.get("tags_header", header_name, None),
        store_set_cookie=s.get("store_set_cookie", boolean, False),
    )


# ---------------------------------------------------------------- flags

_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}]\)[+*{]")


def safe_regex(pattern: object) -> re.Pattern[str]:
    """Compile a targeting regex, refusing patterns that can backtrack catastrophically."""
    text = string(pattern)
    if len(text) > 512:
        raise ValueError("regex longer than 512 characters")
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regex {text!r}: {exc}") from None
    if _NESTED_QUANTIFIER.search(text) or re.search(r"\\[1-9]", text):
        raise ValueError(
            f"unsafe regex {text!r}: nested quantifiers or backreferences can take "
            "exponential time"
        )
    return compiled


def _compile_values(operator: m.Operator, values: tuple[Any, ...]) -> tuple[Any, ...]:
    if operator is m.Operator.REGEX:
        return tuple(safe_regex(v) for v in values)
    if operator is m.Operator.CIDR:
        return tuple(network(v) for v in values)
    if operator.value.startswith("semver_"):
        return tuple(parse_semver(str(v)) for v in values)
    if operator in (m.Operator.LT, m.Operator.LTE, m.Operator.GT, m.Operator.GTE):
        return tuple(number()(v) for v in values)
    return tuple(str(v) if not isinstance(v, bool) else str(v).lower() for v in values)


def attribute_name(value: object, attributes: Mapping[str, object] | None = None) -> str:
    text = string(value)
    if text in m.CONTEXT_FIELDS or text == "environment":
        return text
    if text.startswith("attributes.") and len(text) > len("attributes."):
        name = text.removeprefix("attributes.")
        if attributes is not None and name not in attributes:
            raise ValueError(f"context has no custom attribute {name!r} (context.attributes)")
        return text
    raise ValueError(
        f"unknown attribute {text!r}: use one of {', '.join(m.CONTEXT_FIELDS)} "
        "or attributes.<name>"
    )


def parse_flag(
    r: Reader, key: str, value: object, path: str, line: int,
    attributes: Mapping[str, object] | None = None,
) -> m.Flag:
    """One flag definition, from the config file or from an admin PUT body."""
    if not _NAME.match(key):
        r.error(line, path, f"flag keys may use letters, digits, '_', '-' and '.', got {key!r}")
    s = r.section(value, path, line, FLAG_KEYS)
    if s is None:
        return m.Flag(key)
    ftype = m.FlagType(s.get("type", choice(list(m.FlagType)), "boolean") or "boolean")
    variants: list[m.Variant] = []
    for _, vvalue, vpath, vline in s.elements("variants"):
        v = r.section(vvalue, vpath, vline, ("name", "value", "weight"))
        if v is not None:
            variants.append(m.Variant(
                name=v.get("name", string),
                value=v.get("value", any_value),
                weight=v.get("weight", integer(0)),
            ))
    if ftype is m.FlagType.MULTIVARIATE:
        if not variants:
            s.error("variants" if "variants" in s else None,
                    "a multivariate flag needs at least one variant")
        elif sum(v.weight or 0 for v in variants) <= 0:
            s.error("variants", "variant weights must add up to more than 0")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            s.error("variants", "variant names must be unique")
    elif variants:
        s.error("variants", f"applies only to multivariate flags, not {ftype}")
    default = s.get("default", any_value, None)
    if default is None:
        default = variants[0].value if variants else False
    served = _served_value_check(ftype, variants)
    if (why := served(default)) is not None:
        s.error("default", why)
    for variant in variants:
        if (why := served(variant.value)) is not None:
            s.error("variants", f"variant {variant.name!r}: {why}")
    rollout = s.get("rollout", number(0, 100), None)
    if rollout is not None and ftype is m.FlagType.MULTIVARIATE:
        s.error("rollout", "a multivariate flag splits by variant weights, not rollout")
    if rollout is not None and ftype is m.FlagType.OPERATIONAL:
        s.error("rollout", "an operational flag is on or off for everyone (use kill_switch); "
                "a gradual rollout needs type boolean or percentage")
    if rollout is None and ftype is m.FlagType.PERCENTAGE:
        s.error("rollout" if "rollout" in s else None, "a percentage flag needs rollout (0-100)")
    targeting: list[m.TargetRule] = []
    for _, tvalue, tpath, tline in s.elements("targeting"):
        t = r.section(tvalue, tpath, tline, ("attribute", "operator", "values", "value"))
        if t is None:
            continue
        attr = t.get("attribute", lambda v: attribute_name(v, attributes))
        op = t.get("operator", choice(list(m.Operator)))
        if "values" in t and "value" in t:
            t.error("value", "give either value or values, not both")
        raw = t.data.get("values", [t.data["value"]] if "value" in t else None)
        if raw is None:
            t.error(None, "needs values (a list) or value")
            continue
        if not isinstance(raw, list) or not raw:
            t.error("values", "expected a non-empty list")
            continue
        values = tuple(raw)
        compiled: tuple[Any, ...] = ()
        if op is not None:
            try:
                compiled = _compile_values(m.Operator(op), values)
            except ValueError as exc:
                t.error("values" if "values" in t else "value", str(exc))
        if attr and op:
            targeting.append(m.TargetRule(attr, m.Operator(op), values, compiled))
    environments: dict[str, Any] = {}
    for env, evalue, epath, eline in s.items("environments"):
        if (why := served(evalue)) is not None:
            r.error(eline, epath, why)
        environments[env] = evalue
    bucket_by = s.get("bucket_by", lambda v: attribute_name(v, attributes), None)
    return m.Flag(
        key=key,
        type=ftype,
        default=default,
        status=m.FlagStatus(s.get("status", choice(list(m.FlagStatus)), "active") or "active"),
        description=s.get("description", any_value, "") or "",
        owner=s.get("owner", any_value, "") or "",
        rollout=rollout,
        bucket_by=bucket_by,
        environments=environments,
        tiers=s.get("tiers", string_list, None),
        expires=s.get("expires", date, None),
        variants=tuple(variants),
        prerequisites=s.get("prerequisites", string_list, ()),
        targeting=tuple(targeting),
        kill_switch=s.get("kill_switch", boolean, False),
    )


def _served_value_check(ftype: m.FlagType, variants: list[m.Variant]
                        ) -> Callable[[object], str | None]:
    """What is wrong with a value this flag could serve (default, environment value), or None.

    Boolean-like flags serve true/false; a multivariate flag serves one of its variants'
    values (so every served value has a variant name for metrics and experiments). A string
    travels in a request header, so it may not hold control characters.
    """
    values = [v.value for v in variants]

    def check(value: object) -> str | None:
        if ftype is not m.FlagType.MULTIVARIATE:
            if not isinstance(value, bool):
                return f"a {ftype} flag serves true or false, got {value!r}"
        elif values and value not in values:
            return (f"{value!r} is not the value of any variant "
                    f"({', '.join(repr(v) for v in values)})")
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            return f"{value!r} holds a control character, which cannot travel in a header"
        return None

    return check


def check_flag_graph(r: Reader, flags: Mapping[str, m.Flag], where: Mapping[str, tuple[int, str]]
                     ) -> None:
    """Prerequisites must name existing flags and form no cycle."""
    for key, flag in flags.items():
        line, path = where[key]
        for prereq in flag.prerequisites:
            if prereq not in flags:
                r.error(line, f"{path}.prerequisites", f"unknown flag {prereq!r}"
                        + _hint(prereq, flags))
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(key: str, trail: list[str]) -> None:
        state[key] = 1
        for prereq in flags[key].prerequisites:
            if prereq not in flags:
                continue
            if state.get(prereq) == 1:
                cycle = [*trail[trail.index(prereq):], prereq]
                line, path = where[key]
                r.error(line, f"{path}.prerequisites",
                        "prerequisite cycle: " + " -> ".join(cycle))
            elif prereq not in state:
                visit(prereq, [*trail, prereq])
        state[key] = 2

    for key in flags:
        if key not in state:
            visit(key, [key])


def _hint(word: str, choices: Mapping[str, object]) -> str:
    from gateway.config.reader import nearest

    found = nearest(word, list(choices))
    return f" (did you mean {found!r}?)" if found else ""


# ---------------------------------------------------------------- experiments and routes

EXPERIMENT_KEYS = ("flag", "control", "status", "significance", "power", "sequential",
                   "auto_stop", "metrics")
METRIC_KEYS = ("name", "type", "goal", "primary", "guardrail", "baseline_rate",
               "minimum_detectable_effect", "route", "status")


def status_class(value: object) -> tuple[int, int]:
    """A status class such as "2xx" or one status such as 201: [low, high) of the codes."""
    text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
    if re.fullmatch(r"[1-5]xx", text):
        return int(text[0]) * 100, int(text[0]) * 100 + 100
    if re.fullmatch(r"[1-5][0-9][0-9]", text):
        return int(text), int(text) + 1
    raise ValueError(f"expected a status class such as 2xx or a status such as 201, "
                     f"got {value!r}")


def parse_metric(r: Reader, value: object, path: str, line: int) -> m.ExperimentMetric | None:
    ms = r.section(value, path, line, METRIC_KEYS)
    if ms is None:
        return None
    kind = m.MetricType(ms.get("type", choice(list(m.MetricType)), "conversion")
                        or "conversion")
    route = ms.get("route", string, None)
    statuses = ms.get("status", status_class, None)
    if (route is None) != (statuses is None):
        ms.error("route" if route is None else "status",
                 "a metric measured by the gateway needs both route and status")
    if route is not None and kind is not m.MetricType.CONVERSION:
        ms.error("route", f"a route metric counts conversions; type {kind} cannot have one")
    rate = kind in (m.MetricType.CONVERSION, m.MetricType.ERROR_RATE)
    mde = ms.get("minimum_detectable_effect",
                 number(0, 1, exclusive_minimum=True) if rate else
                 number(0, exclusive_minimum=True), None)
    baseline = ms.get("baseline_rate", number(0, 1, exclusive_minimum=True), None)
    if baseline is not None and not rate:
        ms.error("baseline_rate", f"applies to conversion and error_rate metrics, not {kind}")
    primary = ms.get("primary", boolean, False)
    guardrail = ms.get("guardrail", boolean, False)
    if primary and guardrail:
        ms.error("guardrail", "a metric is either the primary one or a guardrail")
    return m.ExperimentMetric(
        name=ms.get("name", name_token), type=kind,
        goal=m.Goal(ms.get("goal", choice(list(m.Goal)), "increase") or "increase"),
        primary=primary, guardrail=guardrail, baseline_rate=baseline,
        minimum_detectable_effect=mde, route=route, statuses=statuses)


def parse_experiment(r: Reader, name: str, value: object, path: str, line: int
                     ) -> m.Experiment:
    s = r.section(value, path, line, EXPERIMENT_KEYS)
    if s is None:
        return m.Experiment(name, "", "")
    metrics: list[m.ExperimentMetric] = []
    for _, mvalue, mpath, mline in s.elements("metrics"):
        metric = parse_metric(r, mvalue, mpath, mline)
        if metric is not None:
            metrics.append(metric)
    names = [metric.name for metric in metrics]
    for duplicate in sorted({n for n in names if names.count(n) > 1}):
        s.error("metrics", f"metric {duplicate!r} is named twice")
    if sum(metric.primary for metric in metrics) > 1:
        s.error("metrics", "at most one metric is primary")
    return m.Experiment(
        name=name,
        flag=s.get("flag", string),
        control=s.get("control", string),
        status=m.ExperimentStatus(s.get("status", choice(list(m.ExperimentStatus)), "draft")
                                  or "draft"),
        significance=s.get("significance", number(0, 1, exclusive_minimum=True), 0.05),
        power=s.get("power", number(0, 1, exclusive_minimum=True), 0.8),
        sequential=s.get("sequential", boolean, False),
        auto_stop=s.get("auto_stop", boolean, False),
        metrics=tuple(metrics),
    )


_AS_WRITTEN = TargetRules(merge_slashes=False)  # "//" may be meant: merge_slashes is per listener


def path_text(value: object) -> str:
    """A path or prefix that requests are compared with: they are compared in canonical form
    (gateway/target.py), so one written otherwise would never match."""
    text = string(value)
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    try:
        canonical = canonical_path(text, _AS_WRITTEN)
    except BadTarget as exc:
        raise ValueError(f"{text!r} is no request path: {exc}") from None
    if canonical != text:
        raise ValueError(f"requests are matched in canonical form (RFC 3986 §6.2.2), so "
                         f"{text!r} would never match; write {canonical!r}")
    return text


def parse_match(r: Reader, s: Section | None) -> m.Match:
    if s is None:
        return m.Match()
    kinds = [k for k in ("path", "path_prefix", "path_regex") if k in s]
    if len(kinds) != 1:
        s.error(None, "needs exactly one of path, path_prefix, path_regex"
                + (f" (found {', '.join(kinds)})" if kinds else ""))
    regex = None
    if "path_regex" in s:
        def compile_(value: object) -> re.Pattern[str]:
            try:
                return re.compile(string(value))
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        regex = s.get("path_regex", compile_)
    methods = s.get("methods", string_list, None)
    headers: list[tuple[str, str]] = []
    for name, value, path, line in s.items("headers"):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            r.error(line, path, "expected the header's exact value as a string")
            continue
        headers.append((name, str(value)))

    return m.Match(
        path=s.get("path", path_text, None),
        path_prefix=s.get("path_prefix", path_text, None),
        path_regex=regex,
        methods=frozenset(x.upper() for x in methods) if methods else None,
        host=s.get("host", string, None),
        headers=tuple(headers),
    )


def parse_route(r: Reader, index: int, value: object, path: str, line: int) -> m.Route:
    s = r.section(value, path, line, (
        "name", "match", "upstream", "strip_prefix", "rate_limits", "cost", "max_body",
        "cache", "flags", "priority", "compression"))
    if s is None:
        return m.Route(f"#{index}", m.Match(), m.UpstreamRef("", ""))
    up = s.data.get("upstream")
    if isinstance(up, str):
        ref = m.UpstreamRef(up, up)
    elif isinstance(up, Mapping):
        u = s.section("upstream", ("read", "write"))
        read = u.get("read", string) if u else None
        write = u.get("write", string) if u else None
        ref = m.UpstreamRef(read or "", write or "")
    else:
        s.error("upstream" if "upstream" in s else None,
                "needs an upstream name, or {read: NAME, write: NAME}")
        ref = m.UpstreamRef("", "")
    flags_value = s.data.get("flags")
    flags: tuple[str, ...] | None = ()
    if flags_value == "all":
        flags = None  # resolved to every flag once flags are known
    elif flags_value is not None:
        flags = s.get("flags", string_list, ())
    route = m.Route(
        name=s.get("name", name_token, f"#{index}") or f"#{index}",
        match=parse_match(r, s.section("match", (
            "path", "path_prefix", "path_regex", "methods", "host", "headers"))),
        upstream=ref,
        strip_prefix=s.get("strip_prefix", path_text, None),
        rate_limits=s.get("rate_limits", string_list, ()),
        cost=s.get("cost", integer(1), 1),
        max_body=s.get("max_body", size, None),
        cache=parse_route_cache(s.section("cache", ROUTE_CACHE_KEYS)) if "cache" in s else None,
        flags=flags if flags is not None else ("*all*",),
        priority=m.Priority(s.get("priority", choice(m.PRIORITIES), "normal") or "normal"),
        compression=m.RouteCompression(s.get("compression", route_compression, "true")
                                       or "true"),
    )
    return route


def route_compression(value: object) -> str:
    """true / false (YAML booleans) or "always" (compress beside secrets too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "always":
        return "always"
    raise ValueError(f"expected true, false or always, got {value!r}")


# ---------------------------------------------------------------- the whole file

def parse_document(data: object, file: str, env: Mapping[str, str] | None = None) -> m.Config:
    r = Reader(file)
    top = r.section(data, "", 1, TOP_KEYS)
    if top is None:
        r.raise_if_any()
        raise AssertionError("unreachable")

    redis_settings = parse_redis(top.section("redis", (
        "url", "cluster", "key_prefix", "timeout", "failure_mode", "max_connections",
        "max_connections_per_node",
    )) if top.data.get("redis") is not None else None)
    if redis_settings is not None and env and env.get("REDIS_URL"):
        try:
            redis_settings = _replace(redis_settings, url=redis_url(env["REDIS_URL"]))
        except ValueError as exc:
            r.error(0, "REDIS_URL", f"{exc} (from the environment)")
    context = parse_context(r, top.section("context", (*m.CONTEXT_FIELDS, "trusted_proxies",
                                                       "attributes", "priority_by_tier")))
    workers = top.get("workers", integer(1, 64), 1)
    upstreams = {name: parse_upstream(r, name, value, path, line, workers or 1)
                 for name, value, path, line in top.items("upstreams")}
    rules = {name: parse_rule(r, name, value, path, line)
             for name, value, path, line in top.items("rate_limits")}
    flag_where: dict[str, tuple[int, str]] = {}
    flags: dict[str, m.Flag] = {}
    for key, value, path, line in top.items("flags"):
        flags[key] = parse_flag(r, key, value, path, line, context.attributes)
        flag_where[key] = (line, path)
    check_flag_graph(r, flags, flag_where)
    flag_sources, flagd_flags = parse_flag_sources(r, top, file, flags)
    experiments = {name: parse_experiment(r, name, value, path, line)
                   for name, value, path, line in top.items("experiments")}
    cache = parse_cache(r, top.section("cache", CACHE_KEYS))
    compression = parse_compression(r, top.section("compression", COMPRESSION_KEYS)
                                    if "compression" in top else None)
    fh = top.section("flag_headers", ("prefix", "summary"))
    flag_headers = m.FlagHeaders(
        prefix=fh.get("prefix", header_name, "X-Flag-") if fh else "X-Flag-",
        summary=fh.get("summary", header_name, "X-Feature-Flags") if fh else "X-Feature-Flags",
    )

    routes: list[m.Route] = []
    route_where: list[tuple[int, str]] = []
    for index, value, path, line in top.elements("routes"):
        routes.append(parse_route(r, index, value, path, line))
        route_where.append((line, path))
    if "routes" in top and not routes and isinstance(top.data.get("routes"), list):
        top.error("routes", "needs at least one route")

    # ---- references between sections
    for rule, (_, _, path, line) in zip(rules.values(), top.items("rate_limits"),
                                      strict=True):
        if rule.scope and rule.scope.kind == "attribute" and \
                rule.scope.attribute not in context.attributes:
            r.error(line, f"{path}.scope", f"context has no custom attribute "
                    f"{rule.scope.attribute!r} (context.attributes)")
        if rule.tiers and "subscription_tier" not in context.fields:
            # A tier override nothing can select is a mistake, not a no-op.
            r.error(line, f"{path}.tiers", "tier overrides need context.subscription_tier, "
                    "which says each request's tier")
        if rule.degrade_upstream and rule.degrade_upstream not in upstreams:
            r.error(line, f"{path}.degrade_upstream",
                    f"unknown upstream {rule.degrade_upstream!r}" + _hint(rule.degrade_upstream,
                                                                          upstreams))
    for exp, (_, _, path, line) in zip(experiments.values(), top.items("experiments"),
                                      strict=True):
        flag = flags.get(exp.flag) if exp.flag else None
        if exp.flag and flag is None:
            r.error(line, f"{path}.flag", f"unknown flag {exp.flag!r}" + _hint(exp.flag, flags))
        elif flag is not None and exp.control and exp.control not in {v.name for v in
                                                                      flag.variants}:
            r.error(line, f"{path}.control",
                    f"flag {exp.flag!r} has no variant named {exp.control!r}")
        elif flag is not None and sum(v.weight > 0 for v in flag.variants) < 2:
            r.error(line, f"{path}.flag", f"flag {exp.flag!r} splits no traffic between "
                    "variants (it needs two or more variants with a weight)")
        route_names = {route.name for route in routes}
        for metric in exp.metrics:
            if metric.route is not None and metric.route not in route_names:
                r.error(line, f"{path}.metrics", f"metric {metric.name!r}: unknown route "
                        f"{metric.route!r}" + _hint(metric.route, {n: 0 for n in route_names}))
    names: set[str] = set()
    resolved: list[m.Route] = []
    raw_routes = top.data.get("routes")
    raw_routes = raw_routes if isinstance(raw_routes, list) else []
    for route, (line, path), raw in zip(routes, route_where, raw_routes, strict=True):
        def line_of(key: str, raw: object = raw, line: int = line) -> int:
            return raw.line_of(key) if hasattr(raw, "line_of") else line

        if route.name in names:
            r.error(line_of("name"), f"{path}.name", f"duplicate route name {route.name!r}")
        names.add(route.name)
        for up in {route.upstream.read, route.upstream.write} - {""}:
            if up not in upstreams:
                r.error(line_of("upstream"), f"{path}.upstream", f"unknown upstream {up!r}"
                        + _hint(up, upstreams))
        for rule_name in route.rate_limits:
            if rule_name not in rules:
                r.error(line_of("rate_limits"), f"{path}.rate_limits",
                        f"unknown rate-limit rule {rule_name!r}" + _hint(rule_name, rules))
            elif route.cost > _largest_admission(rules[rule_name]):
                r.error(line_of("cost"), f"{path}.cost", f"{route.cost} is more than rule "
                        f"{rule_name!r} can ever admit at once "
                        f"({_largest_admission(rules[rule_name])}), so every request would be "
                        "refused")
        route_flags = route.flags
        if route_flags == ("*all*",):
            route_flags = tuple(flags)
        for flag_key in route_flags:
            if flag_key not in flags and flag_key not in flagd_flags:
                r.error(line_of("flags"), f"{path}.flags", f"unknown flag {flag_key!r}"
                        + _hint(flag_key, {**flags, **flagd_flags}))
        sharded = {rules[n].shards for n in route.rate_limits if n in rules} - {1}
        if math.lcm(*sharded) > MAX_SHARD_TURNS:
            r.error(line_of("rate_limits"), f"{path}.rate_limits",
                    f"its sharded rules have {sorted(sharded)} shards: a route deals its "
                    "requests round every combination of their shards, here "
                    f"{math.lcm(*sharded)}, more than {MAX_SHARD_TURNS}; use shard counts "
                    "that divide one another")
        if route.cache is not None and route.match.methods and \
                not route.match.methods & {"GET", "HEAD"}:
            r.error(line_of("cache"), f"{path}.cache",
                    "a cache policy on a route without GET or HEAD never applies")
        resolved.append(_replace(route, flags=route_flags,
                                 all_flags=route.flags == ("*all*",)))
    if cache.redis and redis_settings is None:
        top.error("cache", "cache.redis: true needs a redis block")

    environment = top.get("environment", string, "production")
    config = m.Config(
        source=file,
        environment=environment or "production",
        listen=parse_listen(top.section("listen", LISTEN_KEYS)),
        workers=workers or 1,
        drain_timeout=top.get("drain_timeout", duration, 15.0),
        logging=parse_logging(top.section("logging", LOGGING_KEYS)),
        admin=parse_admin(top.section("admin", ("host", "port", "token_env"))),
        redis=redis_settings,
        context=context,
        upstreams=upstreams,
        rate_limit_headers=m.HeaderStyle(
            top.get("rate_limit_headers", choice(list(m.HeaderStyle)), "ietf") or "ietf"),
        rate_limits=rules,
        rate_limits_local_max_keys=top.get("rate_limits_local_max_keys",
                                           integer(1, 100_000_000), 100_000) or 100_000,
        cache=cache,
        compression=compression,
        flag_headers=flag_headers,
        flags=flags,
        experiments=experiments,
        routes=tuple(resolved),
        flag_sources=flag_sources,
        flagd_flags=flagd_flags,
        flag_bucketing=m.Bucketing(top.get("flag_bucketing", choice(list(m.Bucketing)),
                                           "flagd-v2") or "flagd-v2"),
        ofrep=top.get("ofrep", boolean, True),
    )
    r.raise_if_any()
    return config


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def load_config(path: str, env: Mapping[str, str] | None = None) -> m.Config:
    """Read and validate a config file. Raises ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(path, 0, "(file)", f"cannot read: {exc.strerror}")]) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [ConfigIssue(path, line, "(yaml)", f"invalid YAML: {problem}")]) from None
    if data is None:  # no document at all: only whitespace or comments
        raise ConfigError([ConfigIssue(path, 0, "(file)", "is empty: a configuration needs "
                                                          "at least upstreams and routes")])
    return parse_document(data, path, env)


__all__ = ["ConfigError", "load_config", "parse_document", "parse_flag"]
