"""OpenFeature Remote Evaluation Protocol (OFREP) on the admin listener.

POST /ofrep/v1/evaluate/flags/{key}   one flag: {"context": {...}} -> key, value, variant, reason
POST /ofrep/v1/evaluate/flags         every flag; ETag / If-None-Match (304) for polling
GET  /ofrep/v1/configuration          what this implementation supports

Shapes and status codes follow open-feature/protocol service/openapi.yaml: 404 with
errorCode FLAG_NOT_FOUND, 400 with PARSE_ERROR (the body is not JSON), INVALID_CONTEXT (a
context field of the wrong type) or GENERAL (a flagd flag's targeting failed).

Both kinds of flag answer: the gateway's own (`flags:` and run-time changes), evaluated by
the same code that decides the upstream's flag headers, so a service reading a flag here
gets the value its requests carry; and flagd flag files (`flag_sources:`).

Context mapping: `targetingKey` is the value the flag buckets by: the field named by the
flag's `bucket_by`, else `user_id` (unless the context names that field itself). Context
fields (`user_id`, `tenant_id`, ...), `environment` and the attributes declared under
`context.attributes` (given by name, or inside `"attributes": {...}`) must be strings.
Other members reach only flagd flags, whose JsonLogic reads the context as sent plus the
gateway's fields (`{"var": "user_id"}`, `{"var": "attributes.app_version"}`).

Reasons: OpenFeature has fewer than the gateway; each gateway reason maps to the nearest
OpenFeature one (ROLLOUT -> SPLIT, KILLED -> DISABLED, TIER_NOT_ELIGIBLE -> DEFAULT, ...)
and the gateway's own is kept in `metadata.gatewayReason`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.admin import ADMIN_ROUTES, PROCESS
from gateway.config.model import CONTEXT_FIELDS, Config
from gateway.context import RequestContext
from gateway.flagd import FlagdFlag, evaluate_flagd
from gateway.flags.engine import FlagEngine
from gateway.flags.evaluate import Evaluation, Reason
from gateway.problem import problem

OPENFEATURE_REASON: dict[Reason, str] = {
    Reason.STATIC: "STATIC",
    Reason.ROLLOUT: "SPLIT",
    Reason.SPLIT: "SPLIT",
    Reason.ROLLOUT_EXCLUDED: "SPLIT",
    Reason.TARGETING_NOT_MATCHED: "DEFAULT",
    Reason.DISABLED: "DISABLED",
    Reason.KILLED: "DISABLED",
    Reason.EXPIRED: "DEFAULT",
    Reason.ENVIRONMENT_OVERRIDE: "TARGETING_MATCH",
    Reason.TIER_NOT_ELIGIBLE: "DEFAULT",
    Reason.PREREQUISITE_FAILED: "DEFAULT",
    Reason.ERROR: "ERROR",
}


class OfrepError(Exception):
    def __init__(self, status: int, code: str, details: str) -> None:
        super().__init__(details)
        self.status, self.code, self.details = status, code, details


# ---------------------------------------------------------------- the context

@dataclass(frozen=True, slots=True)
class OfrepContext:
    targeting_key: str | None
    fields: dict[str, str]  # context fields and environment
    attributes: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)  # the rest: flagd flags only

    def for_flag(self, bucket_by: str | None, environment: str) -> RequestContext:
        fields = dict(self.fields)
        attributes = dict(self.attributes)
        target = bucket_by or "user_id"
        if self.targeting_key is not None:
            if target.startswith("attributes."):
                attributes.setdefault(target[11:], self.targeting_key)
            else:
                fields.setdefault(target, self.targeting_key)
        fields.setdefault("client_ip", "")
        fields.setdefault("environment", environment)
        return RequestContext(attributes=attributes, **fields)

    def for_flagd(self) -> dict[str, Any]:
        data: dict[str, Any] = {**self.extra, **self.fields,
                                "attributes": dict(self.attributes)}
        if self.targeting_key is not None:
            data["targetingKey"] = self.targeting_key
            data.setdefault("user_id", self.targeting_key)
        return data


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise OfrepError(400, "INVALID_CONTEXT", f"context.{name} must be a string, got "
                                                 f"{type(value).__name__}")
    return value


def parse_context(body: bytes, config: Config) -> OfrepContext:
    """The request body (`{"context": {...}}`, or empty) as an OfrepContext."""
    try:
        data = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise OfrepError(400, "PARSE_ERROR", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OfrepError(400, "PARSE_ERROR", "the body must be a JSON object")
    context = data.get("context")
    context = {} if context is None else context
    if not isinstance(context, dict):
        raise OfrepError(400, "INVALID_CONTEXT", "context must be a JSON object")
    declared = config.context.attributes
    targeting_key = None
    fields: dict[str, str] = {}
    attributes: dict[str, str] = {}
    extra: dict[str, Any] = {}
    for name, value in context.items():
        if name == "targetingKey":
            targeting_key = _string(name, value)
        elif name in CONTEXT_FIELDS or name == "environment":
            fields[name] = _string(name, value)
        elif name in declared:
            attributes[name] = _string(name, value)
        elif name == "attributes":
            if not isinstance(value, dict):
                raise OfrepError(400, "INVALID_CONTEXT", "context.attributes must be an object")
            for key, item in value.items():
                attributes[key] = _string(f"attributes.{key}", item)
        else:
            extra[name] = value
    return OfrepContext(targeting_key, fields, attributes, extra)


# ---------------------------------------------------------------- evaluating

def _gateway_answer(engine: FlagEngine, key: str, ctx: OfrepContext) -> dict[str, Any]:
    flag = engine.flags[key]
    result: Evaluation | None = engine.evaluate_one(
        key, ctx.for_flag(flag.bucket_by, engine.config.environment))
    assert result is not None
    return {"key": key, "value": result.value, "variant": result.variant,
            "reason": OPENFEATURE_REASON[result.reason],
            "metadata": {"gatewayReason": result.reason.value,
                         "source": "runtime" if key in engine.overrides.definitions
                         else "config"}}


def _flagd_answer(flag: FlagdFlag, ctx: OfrepContext, config: Config) -> dict[str, Any]:
    outcome = evaluate_flagd(flag, ctx.for_flagd(), config.flag_bucketing, time.time())
    if outcome.error_code is not None:
        return {"key": flag.key, "errorCode": outcome.error_code,
                "errorDetails": outcome.error}
    answer: dict[str, Any] = {"key": flag.key, "reason": outcome.reason,
                              "metadata": {**flag.metadata, "source": "flagd"}}
    if outcome.has_value:  # none: the caller's code default applies (OFREP ADR 0006)
        answer["value"] = outcome.value
        answer["variant"] = outcome.variant
    return answer


def _answer(engine: FlagEngine, key: str, ctx: OfrepContext) -> dict[str, Any] | None:
    if key in engine.flags:
        return _gateway_answer(engine, key, ctx)
    flagd = engine.config.flagd_flags.get(key)
    return _flagd_answer(flagd, ctx, engine.config) if flagd is not None else None


# ---------------------------------------------------------------- handlers

def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data),
                        content_type="application/json", headers=headers)


def _failure(exc: OfrepError, key: str | None) -> web.Response:
    body: dict[str, Any] = {"errorCode": exc.code, "errorDetails": exc.details}
    if key is not None:
        body = {"key": key, **body}
    return _json(body, exc.status)


def _ready(request: web.Request) -> tuple[FlagEngine | None, web.Response | None]:
    process = request.app[PROCESS]
    engine = process.pipeline.runtime.flags
    if not process.pipeline.runtime.config.ofrep:
        return None, problem(404, "OFREP is turned off in this gateway's config (ofrep: false)")
    if process.services is None or not isinstance(engine, FlagEngine):
        return None, problem(503, "the gateway is still starting; flags are not loaded yet")
    engine.refresh()
    return engine, None


async def _prepare(request: web.Request, key: str | None
                   ) -> tuple[FlagEngine, OfrepContext] | web.Response:
    """The engine and the request's context, or the answer that refuses the request."""
    engine, refused = _ready(request)
    if engine is None:
        assert refused is not None
        return refused
    try:
        return engine, parse_context(await request.read(), engine.config)
    except OfrepError as exc:
        return _failure(exc, key)


async def evaluate_flag(request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    prepared = await _prepare(request, key)
    if isinstance(prepared, web.Response):
        return prepared
    engine, ctx = prepared
    answer = _answer(engine, key, ctx)
    if answer is None:
        return _failure(OfrepError(404, "FLAG_NOT_FOUND", f"no flag named {key!r}"), key)
    return _json(answer, 400 if "errorCode" in answer else 200)


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison against each listed tag, or `*`."""
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)


async def evaluate_all(request: web.Request) -> web.StreamResponse:
    prepared = await _prepare(request, None)
    if isinstance(prepared, web.Response):
        return prepared
    engine, ctx = prepared
    keys = [*engine.flags, *(k for k in engine.config.flagd_flags if k not in engine.flags)]
    answers = [_answer(engine, key, ctx) for key in keys]
    body = orjson.dumps({"flags": answers})
    etag = _etag(body)
    if _matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def configuration(request: web.Request) -> web.StreamResponse:
    _, refused = _ready(request)
    if refused is not None:
        return refused
    return _json({"name": "sidecar-gateway", "capabilities": {
        "cacheInvalidation": {"polling": {"enabled": True, "minPollingIntervalMs": 1000}},
        "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float",
                                              "object"]}}})


def register(app: web.Application) -> None:
    app.router.add_post("/ofrep/v1/evaluate/flags/{key}", evaluate_flag)
    app.router.add_post("/ofrep/v1/evaluate/flags", evaluate_all)
    app.router.add_get("/ofrep/v1/configuration", configuration)


if register not in ADMIN_ROUTES:
    ADMIN_ROUTES.append(register)
