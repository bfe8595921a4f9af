"""The config's JSON Schema (2020-12), for editors: `gateway schema` prints it.

Built from the parser's own key lists (TOP_KEYS, LISTEN_KEYS, RULE_KEYS, FLAG_KEYS, ...,
CONTEXT_FIELDS and the enums of gateway.config.model): a key the parser accepts with no
entry here stops `schema()` with a KeyError, and tests/unit/test_schema.py parses configs
while recording every key each section of the parser allows and finds each in the schema,
so the two cannot drift. Every object is closed (`additionalProperties: false`) as the
parser rejects unknown keys. The schema checks shapes and types; references between
sections (a route's upstream exists, ...) remain `gateway check`'s.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.config import model as m
from gateway.config.parse import (
    ADMISSION_KEYS,
    ASSET_POLICY_KEYS,
    CACHE_KEYS,
    COMPRESSION_KEYS,
    EXPERIMENT_KEYS,
    FLAG_KEYS,
    LISTEN_KEYS,
    LOGGING_KEYS,
    METRIC_KEYS,
    ROUTE_CACHE_KEYS,
    RULE_KEYS,
    TOP_KEYS,
)

Schema = dict[str, Any]
SCHEMA_ID = "https://sidecar-gateway.invalid/schema/gateway.json"

STRING: Schema = {"type": "string", "minLength": 1}
BOOLEAN: Schema = {"type": "boolean"}
DURATION: Schema = {"$ref": "#/$defs/duration"}
SIZE: Schema = {"$ref": "#/$defs/size"}
HEADER: Schema = {"type": "string", "pattern": r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"}
NAME: Schema = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"}
STRINGS: Schema = {"type": "array", "items": STRING}
ANY: Schema = {}
MEDIA_RANGES: Schema = {"type": "array", "items": {
    "type": "string", "pattern": r"^[A-Za-z0-9!#$&^_.+\-]+/(\*|[A-Za-z0-9!#$&^_.+\-]+)$"}}


def integer(minimum: int | None = None, maximum: int | None = None) -> Schema:
    out: Schema = {"type": "integer"}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def number(minimum: float, maximum: float, exclusive: bool = False) -> Schema:
    low = "exclusiveMinimum" if exclusive else "minimum"
    return {"type": "number", low: minimum, "maximum": maximum}


def one_of(options: Iterable[Any]) -> Schema:
    return {"enum": [o.value if isinstance(o, enum.Enum) else o for o in options]}


def closed(keys: Iterable[str], types: Mapping[str, Schema], required: Iterable[str] = (),
           description: str = "") -> Schema:
    """An object with exactly the parser's `keys`, each typed by `types` (KeyError if not)."""
    out: Schema = {"type": "object", "additionalProperties": False,
                   "properties": {key: types[key] for key in keys}}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def mapping_of(value: Schema) -> Schema:
    return {"type": "object", "additionalProperties": value}


def _listen() -> Schema:
    return closed(LISTEN_KEYS, {
        "host": STRING, "port": integer(0, 65535), "max_header_size": SIZE,
        "header_timeout": DURATION, "idle_timeout": DURATION, "body_timeout": DURATION,
        "max_connections": integer(1, 1_000_000), "merge_slashes": BOOLEAN,
        "escaped_slashes": one_of(m.EscapedSlashes), "underscores_in_headers": BOOLEAN})


def _context() -> Schema:
    source: Schema = {"$ref": "#/$defs/headerSource"}
    types = {name: source for name in m.CONTEXT_FIELDS}
    types["trusted_proxies"] = {"type": "array", "items": {"type": "string"}}
    types["attributes"] = mapping_of(source)
    types["priority_by_tier"] = mapping_of({"type": "integer"})
    return closed((*m.CONTEXT_FIELDS, "trusted_proxies", "attributes", "priority_by_tier"),
                  types)


def _rule() -> Schema:
    tier = closed(("limit", "burst", "window"), {
        "limit": integer(1), "burst": integer(0), "window": DURATION})
    scope = {"type": "string",
             "pattern": r"^(global|tenant|user|ip|api_key|attribute:.+)$"}
    return closed(RULE_KEYS, {
        "algorithm": one_of(m.Algorithm), "scope": scope, "limit": integer(1),
        "window": DURATION, "burst": integer(0), "action": one_of(m.Action),
        "max_wait": DURATION, "queue_size": integer(0), "tiers": mapping_of(tier),
        "degrade_upstream": STRING, "shadow": BOOLEAN, "when_absent": one_of(m.WhenAbsent),
        "shards": integer(1, 1024), "lease": integer(2, 1_000_000), "lease_ttl": DURATION},
        required=("algorithm", "limit", "window"))


def _flag() -> Schema:
    variant = closed(("name", "value", "weight"), {
        "name": STRING, "value": ANY, "weight": integer(0)}, required=("name", "value",
                                                                      "weight"))
    target = closed(("attribute", "operator", "values", "value"), {
        "attribute": STRING, "operator": one_of(m.Operator),
        "values": {"type": "array", "minItems": 1}, "value": ANY},
        required=("attribute", "operator"))
    return closed(FLAG_KEYS, {
        "description": {"type": "string"}, "owner": {"type": "string"},
        "status": one_of(m.FlagStatus), "type": one_of(m.FlagType), "default": ANY,
        "rollout": number(0, 100), "bucket_by": STRING, "environments": mapping_of(ANY),
        "tiers": STRINGS, "expires": {"type": "string", "format": "date"},
        "variants": {"type": "array", "items": variant}, "prerequisites": STRINGS,
        "targeting": {"type": "array", "items": target}, "kill_switch": BOOLEAN})


def _experiment() -> Schema:
    share = number(0, 1, exclusive=True)
    status = {"oneOf": [{"type": "string", "pattern": "^[1-5]([0-9][0-9]|xx)$"},
                        integer(100, 599)]}
    metric = closed(METRIC_KEYS, {
        "name": STRING, "type": one_of(m.MetricType), "goal": one_of(m.Goal),
        "primary": BOOLEAN, "guardrail": BOOLEAN, "baseline_rate": share,
        # a rate's effect is a share; a mean's is in the metric's own unit
        "minimum_detectable_effect": {"type": "number", "exclusiveMinimum": 0},
        "route": STRING, "status": status}, required=("name",))
    return closed(EXPERIMENT_KEYS, {
        "flag": STRING, "control": STRING, "status": one_of(m.ExperimentStatus),
        "significance": share, "power": share, "sequential": BOOLEAN, "auto_stop": BOOLEAN,
        "metrics": {"type": "array", "items": metric}}, required=("flag", "control"))


def _route() -> Schema:
    path = {"type": "string", "pattern": "^/"}
    match = closed(("path", "path_prefix", "path_regex", "methods", "host", "headers"), {
        "path": path, "path_prefix": path, "path_regex": STRING, "methods": STRINGS,
        "host": STRING, "headers": mapping_of({"type": ["string", "integer"]})})
    split = closed(("read", "write"), {"read": STRING, "write": STRING},
                   required=("read", "write"))
    cache = closed(ROUTE_CACHE_KEYS, {
        "ttl": DURATION, "override": BOOLEAN, "browser_ttl": DURATION,
        "stale_while_revalidate": DURATION, "stale_if_error": DURATION,
        "ignore_query": STRINGS, "tags_header": HEADER, "store_set_cookie": BOOLEAN})
    return closed(("name", "match", "upstream", "strip_prefix", "rate_limits", "cost",
                   "max_body", "cache", "flags", "priority", "compression"), {
        "name": NAME, "match": match, "upstream": {"oneOf": [STRING, split]},
        "strip_prefix": STRING, "rate_limits": STRINGS, "cost": integer(1), "max_body": SIZE,
        "cache": cache, "flags": {"oneOf": [{"const": "all"}, STRINGS]},
        "priority": one_of(m.PRIORITIES),
        "compression": {"oneOf": [BOOLEAN, {"const": "always"}]}},
        required=("match", "upstream"))


def _top() -> dict[str, Schema]:
    admission = closed(ADMISSION_KEYS, {
        "max_concurrency": {"oneOf": [{"const": "adaptive"}, integer(1, 1_000_000)]},
        "min": integer(1, 1_000_000), "max": integer(1, 1_000_000),
        "queue_size": integer(0, 1_000_000),
        "max_wait": closed([str(p) for p in m.PRIORITIES],
                           {str(p): DURATION for p in m.PRIORITIES}),
        "target_delay": DURATION, "interval": DURATION}, required=("max_concurrency",))
    upstream = closed(("url", "connect_timeout", "timeout", "max_connections", "admission"), {
        "url": {"type": "string", "pattern": r"^https?://[^/\s]+(/\S*)?$"},
        "connect_timeout": DURATION, "timeout": DURATION,
        "max_connections": integer(1, 100_000), "admission": admission}, required=("url",))
    return {
        "environment": STRING,
        "listen": _listen(),
        "workers": integer(1, 64),
        "drain_timeout": DURATION,
        "logging": closed(LOGGING_KEYS, {
            "level": one_of(("debug", "info", "warning", "error")), "access_log": BOOLEAN,
            "bad_request_lines_per_second": integer(0, 1_000_000)}),
        "admin": closed(("host", "port", "token_env"), {
            "host": STRING, "port": integer(0, 65535), "token_env": STRING}),
        "redis": closed(("url", "cluster", "key_prefix", "timeout", "failure_mode",
                         "max_connections", "max_connections_per_node"), {
            "url": {"type": "string", "pattern": "^(redis|rediss|unix)://"},
            "cluster": BOOLEAN, "key_prefix": {"type": "string"}, "timeout": DURATION,
            "failure_mode": one_of(m.FailureMode), "max_connections": integer(1, 100_000),
            "max_connections_per_node": integer(1, 100_000)}),
        "context": _context(),
        "upstreams": mapping_of(upstream),
        "rate_limit_headers": one_of(m.HeaderStyle),
        "rate_limits": mapping_of({"$ref": "#/$defs/rateLimitRule"}),
        "rate_limits_local_max_keys": integer(1, 100_000_000),
        "cache": closed(CACHE_KEYS, {
            "memory_max": SIZE, "max_object_size": SIZE, "redis": BOOLEAN,
            "asset_policies": {"type": "array", "items": closed(ASSET_POLICY_KEYS, {
                "types": MEDIA_RANGES, "ttl": DURATION, "browser_ttl": DURATION,
                "override": BOOLEAN}, required=("types",))},
            "immutable_paths": STRING}),
        "compression": closed(COMPRESSION_KEYS, {
            "encodings": {"type": "array", "uniqueItems": True,
                          "items": one_of(m.Encoding)},
            "min_size": SIZE, "types": MEDIA_RANGES,
            "level": closed([str(e) for e in m.Encoding],
                            {str(e): integer(*m.LEVELS[e]) for e in m.Encoding})}),
        "flag_headers": closed(("prefix", "summary"), {"prefix": HEADER, "summary": HEADER}),
        "flags": mapping_of({"$ref": "#/$defs/flag"}),
        "experiments": mapping_of(_experiment()),
        "routes": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/route"}},
        "flag_sources": {"type": "array", "items": closed(("file",), {"file": STRING},
                                                          required=("file",))},
        "flag_bucketing": one_of(m.Bucketing),
        "ofrep": BOOLEAN,
    }


def schema() -> Schema:
    top = closed(TOP_KEYS, _top())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "sidecar-gateway configuration",
        **top,
        "$defs": {
            "duration": {"description": "seconds, or a number with ms, s, m, h or d",
                         "anyOf": [{"type": "number", "minimum": 0},
                                   {"type": "string",
                                    "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}]},
            "size": {"description": "bytes, or a number with B, KiB, MiB, GiB, KB, MB or GB",
                     "anyOf": [{"type": "integer", "minimum": 0},
                               {"type": "string",
                                "pattern": r"^\s*\d+(\.\d+)?\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$"}]},
            "headerSource": closed(("header", "default"), {
                "header": HEADER, "default": {"type": ["string", "number", "boolean"]}},
                required=("header",)),
            "rateLimitRule": _rule(),
            "flag": _flag(),
            "route": _route(),
        },
    }
