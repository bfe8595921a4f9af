"""Warnings about a valid configuration that probably does not do what its author meant.

They never stop a gateway: `gateway check` prints them and exits 0, `gateway run` prints
them at start. Each is `dotted.path: what happens, and what to set instead`.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.adminauth import configured_token, loopback, unset_token_hint
from gateway.config.model import (
    Config,
    RateLimitRule,
    RedisSettings,
    RouteCompression,
    Scope,
    WhenAbsent,
)

_ABSENT = {"user": "a user id", "tenant": "a tenant id", "api_key": "an API key"}


def _missing(scope: Scope) -> str:
    return _ABSENT.get(scope.kind) or f"the attribute {scope.attribute!r}"


def skippable(rule: RateLimitRule) -> bool:
    """True when some request can lack the rule's scope value and the rule then skips it."""
    return rule.scope.kind not in ("global", "ip") and rule.when_absent is WhenAbsent.SKIP


def route_limit_warnings(config: Config) -> list[str]:
    """A route whose every rule can be skipped does not limit a client that omits the values:
    an anonymous client of a route with only user rules is never limited."""
    out = []
    for i, route in enumerate(config.routes):
        rules = [config.rate_limits[name] for name in route.rate_limits]
        if rules and all(skippable(rule) for rule in rules):
            lacking = "; ".join(f"{rule.name} without {_missing(rule.scope)}" for rule in rules)
            out.append(f"routes[{i}] ({route.name}): a request can skip every rate limit of "
                       f"this route ({lacking}); set when_absent: ip or reject on one of its "
                       "rules, or add an ip-scoped rule")
    return out


def admin_warnings(config: Config, environ: Mapping[str, str]) -> list[str]:
    admin = config.admin
    if configured_token(admin, environ) is not None or loopback(admin.host):
        return []
    return [f"admin.host: {admin.host!r} is not a loopback address and no admin token is set, "
            "so every /admin/* call will be refused (403); /healthz, /readyz and /metrics "
            f"stay open; {unset_token_hint(admin)}"]


def identity_warnings(config: Config) -> list[str]:
    """Identity headers are believed only from trusted proxies (gateway.context): with none
    listed, every request has no identity and every flag that targets or buckets by one
    serves its default."""
    identity = [*(f"context.{name}" for name in config.context.fields),
                *(f"context.attributes.{name}" for name in config.context.attributes)]
    if not identity or config.context.trusted_proxies:
        return []
    return [f"{', '.join(identity)} read request headers, but context.trusted_proxies is "
            "empty: those headers are believed only from a trusted proxy, so they are "
            "always dropped, every request has no identity, and every flag that targets or "
            "buckets by one serves its default. List the proxy in front of the gateway "
            "(127.0.0.1/32 for a sidecar's own service) in context.trusted_proxies."]


def compression_warnings(config: Config) -> list[str]:
    """A route's `compression: always` asks for something only the top-level block turns on."""
    if config.compression is not None:
        return []
    return [f"routes[{i}] ({route.name}).compression: 'always' compresses nothing without a "
            "top-level compression block; add one (README, Compression) or drop the key"
            for i, route in enumerate(config.routes)
            if route.compression is RouteCompression.ALWAYS]


def shard_warnings(config: Config) -> list[str]:
    """Shards spread a hot rule over a cluster's masters; on one Redis, or in-process, they
    spread nothing and only cost accuracy (see the README's accuracy bound)."""
    if config.redis is not None and config.redis.cluster:
        return []
    where = "one Redis" if config.redis is not None else "the in-process store"
    return [f"rate_limits.{rule.name}.shards: {rule.shards} shards on {where} spread no "
            "load and can refuse a request while another shard has room; set redis.cluster: "
            "true, or drop shards" for rule in config.rate_limits.values() if rule.shards > 1]


def lease_warnings(config: Config) -> list[str]:
    """A lease as large as the quota lets one process take all of it; a lease outliving
    the window spends units in a later window than they were counted in; a lease without
    Redis does nothing (every process counts in-process anyway)."""
    out = []
    for name, rule in config.rate_limits.items():
        if not rule.lease:
            continue
        path = f"rate_limits.{name}"
        quota = rule.limit + rule.burst
        if rule.lease >= quota:
            out.append(f"{path}.lease: {rule.lease} is at least the rule's whole quota "
                       f"({quota}): one process can take all of it and leave the others "
                       f"nothing until lease_ttl; a lease of a small fraction of it keeps "
                       f"the round trips down without that")
        if rule.lease_ttl > rule.window:
            out.append(f"{path}.lease_ttl: {rule.lease_ttl:g}s is longer than the window "
                       f"({rule.window:g}s): units taken in one window are spent in later "
                       f"ones; set lease_ttl to at most the window")
        if config.redis is None:
            out.append(f"{path}.lease: without a redis block every process decides "
                       f"in-process and the lease does nothing")
        for route in config.routes:
            others = [n for n in route.rate_limits if not config.rate_limits[n].lease]
            if name in route.rate_limits and others:
                out.append(f"{path}.lease: route {route.name} also has rules without a "
                           f"lease ({', '.join(others)}): a request is spent from a lease "
                           f"only when every rule of it has one, so there it asks Redis "
                           f"every time and the lease does nothing")
    return out


def redis_warnings(config: Config) -> list[str]:
    """Settings of the other Redis topology than the one configured are not used; a hash tag
    in the prefix would put every key of a cluster in one slot, so one master."""
    redis = config.redis
    if redis is None:
        return []
    default = RedisSettings()
    out = []
    if redis.cluster and redis.max_connections != default.max_connections:
        out.append("redis.max_connections: sizes the pool of a single Redis and is not used "
                   "with cluster: true; set redis.max_connections_per_node instead")
    if not redis.cluster and redis.max_connections_per_node != default.max_connections_per_node:
        out.append("redis.max_connections_per_node: is used only with cluster: true; a single "
                   "Redis's pool is sized by redis.max_connections")
    if redis.cluster and "{" in redis.key_prefix and "}" in redis.key_prefix.split("{", 1)[1]:
        out.append(f"redis.key_prefix: {redis.key_prefix!r} holds a hash tag, so every key of "
                   "the gateway hashes to one slot and all load lands on one master of the "
                   "cluster; use a prefix without braces")
    return out


def config_warnings(config: Config, environ: Mapping[str, str]) -> list[str]:
    return [*admin_warnings(config, environ), *route_limit_warnings(config),
            *identity_warnings(config), *shard_warnings(config), *lease_warnings(config),
            *redis_warnings(config), *compression_warnings(config)]
