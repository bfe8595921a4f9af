"""Admin endpoints for flags (CONTRACT "Admin listener").

GET    /admin/flags                 every effective definition, and where it comes from
GET    /admin/flags/{key}           one definition; with ?context={json}: value, variant, reason
PUT    /admin/flags/{key}           create or replace a flag at run time (whole definition)
PATCH  /admin/flags/{key}           change some members (RFC 7396 JSON Merge Patch)
DELETE /admin/flags/{key}           drop the runtime change: the file's definition applies again

Changes are validated exactly like the config file and either apply whole or not at all:
400 with every problem, 404 unknown flag, 409 when removing a flag others need, 503 when
Redis (which holds shared changes) is unreachable.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.admin import ADMIN_ROUTES, PROCESS
from gateway.admin import Refused as _Refused
from gateway.admin import json_object as _json_object
from gateway.config.model import CONTEXT_FIELDS
from gateway.context import RequestContext
from gateway.flags.definition import (
    check_flag_set,
    flag_to_json,
    merge_patch,
    parse_definition,
)
from gateway.flags.engine import FlagEngine
from gateway.flags.store import FlagOverrides
from gateway.problem import problem
from gateway.redisconn import RedisUnavailable

_CONTEXT_KEYS = (*CONTEXT_FIELDS, "attributes", "environment")


def _engine(request: web.Request) -> tuple[FlagEngine, FlagOverrides]:
    process = request.app[PROCESS]
    engine = process.pipeline.runtime.flags
    if process.services is None or not isinstance(engine, FlagEngine):
        raise _Refused(problem(503, "the gateway is still starting; flags are not loaded yet"))
    return engine, engine.overrides


def _invalid(key: str, errors: list[str]) -> web.Response:
    return problem(400, f"invalid definition of flag {key!r}: " + "; ".join(errors),
                   errors=errors)


def _describe(engine: FlagEngine, key: str) -> dict[str, Any]:
    runtime = key in engine.overrides.definitions
    return {
        "key": key,
        "source": "runtime" if runtime else "config",
        "overrides_config": runtime and key in engine.config.flags,
        "definition": flag_to_json(engine.flags[key]),
    }


def context_from_json(text: str, environment: str) -> RequestContext:
    """`?context={"user_id": "u1", "attributes": {"app_version": "2.8.0"}}` -> context."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Refused(problem(400, f"context is not valid JSON: {exc}")) from None
    if not isinstance(data, dict):
        raise _Refused(problem(400, "context must be a JSON object"))
    fields: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _CONTEXT_KEYS:
            raise _Refused(problem(400, f"context has no field {name!r}; valid: "
                                        f"{', '.join(_CONTEXT_KEYS)}"))
        if name == "attributes":
            if not isinstance(value, dict) or not all(isinstance(v, str)
                                                      for v in value.values()):
                raise _Refused(problem(400, "context.attributes must map names to strings"))
        elif not isinstance(value, str):
            raise _Refused(problem(400, f"context.{name} must be a string, got "
                                        f"{type(value).__name__}"))
        fields[name] = value
    fields.setdefault("client_ip", "")
    fields.setdefault("environment", environment)
    return RequestContext(**fields)


async def _store(engine: FlagEngine, key: str, definition: dict[str, Any] | None
                 ) -> web.Response | None:
    try:
        await engine.overrides.put(key, definition)
    except RedisUnavailable as exc:
        return problem(503, f"the change was not applied: Redis, which shares flag changes "
                            f"between gateways, is unreachable ({exc})")
    engine.refresh()
    return None


async def _replace(engine: FlagEngine, key: str, definition: dict[str, Any]) -> web.Response:
    """Validate like the config file, check the whole flag set, then store: all or nothing."""
    flag, errors = parse_definition(engine.config, key, definition)
    if flag is None:
        return _invalid(key, errors)
    candidate = dict(engine.flags)
    candidate[key] = flag
    if errors := check_flag_set(engine.config, candidate):
        return _invalid(key, errors)
    failed = await _store(engine, key, flag_to_json(flag))
    return failed or web.json_response(_describe(engine, key))


# ---------------------------------------------------------------- handlers

async def list_flags(request: web.Request) -> web.StreamResponse:
    try:
        engine, _ = _engine(request)
    except _Refused as refused:
        return refused.response
    engine.refresh()
    return web.json_response({
        "environment": engine.config.environment,
        "flags": {key: _describe(engine, key) for key in engine.flags},
    })


async def get_flag(request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    try:
        engine, _ = _engine(request)
        engine.refresh()
        if key not in engine.flags:
            return problem(404, f"no flag named {key!r}")
        if "context" not in request.query:
            return web.json_response(_describe(engine, key))
        ctx = context_from_json(request.query["context"], engine.config.environment)
    except _Refused as refused:
        return refused.response
    result = engine.evaluate_one(key, ctx)
    assert result is not None
    return web.json_response({"key": key, "value": result.value, "variant": result.variant,
                              "reason": result.reason.value})


async def _change(request: web.Request, merge: bool) -> web.StreamResponse:
    """PUT (`merge` False: the body is the whole definition) or PATCH (RFC 7396 merge)."""
    key = request.match_info["key"]
    try:
        engine, overrides = _engine(request)
        body = await _json_object(request, "a patch" if merge else "a flag definition")
    except _Refused as refused:
        return refused.response
    if key in engine.config.flagd_flags:  # one source per flag: no silent shadowing
        return problem(409, f"flag {key!r} comes from a flagd file "
                            f"({engine.config.flagd_flags[key].source}); change it there")
    async with overrides.lock:
        if not merge:
            return await _replace(engine, key, body)
        engine.refresh()
        current = engine.flags.get(key)
        if current is None:
            return problem(404, f"no flag named {key!r} (PUT creates one)")
        return await _replace(engine, key, merge_patch(flag_to_json(current), body))


async def put_flag(request: web.Request) -> web.StreamResponse:
    return await _change(request, merge=False)


async def patch_flag(request: web.Request) -> web.StreamResponse:
    return await _change(request, merge=True)


async def delete_flag(request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    try:
        engine, overrides = _engine(request)
    except _Refused as refused:
        return refused.response
    async with overrides.lock:
        if key not in overrides.definitions:
            return problem(404, f"flag {key!r} has no runtime change to remove")
        remaining = dict(engine.flags)
        remaining.pop(key)
        if key in engine.config.flags:
            remaining[key] = engine.config.flags[key]
        if errors := check_flag_set(engine.config, remaining):
            return problem(409, f"flag {key!r} cannot go back to the file's definition: "
                                + "; ".join(errors), errors=errors)
        failed = await _store(engine, key, None)
        if failed is not None:
            return failed
        restored = key in engine.flags
        return web.json_response({"key": key, "removed": True, "source":
                                  "config" if restored else None,
                                  "definition": flag_to_json(engine.flags[key])
                                  if restored else None})


def register(app: web.Application) -> None:
    app.router.add_get("/admin/flags", list_flags)
    app.router.add_get("/admin/flags/{key}", get_flag)
    app.router.add_put("/admin/flags/{key}", put_flag)
    app.router.add_patch("/admin/flags/{key}", patch_flag)
    app.router.add_delete("/admin/flags/{key}", delete_flag)


if register not in ADMIN_ROUTES:
    ADMIN_ROUTES.append(register)
