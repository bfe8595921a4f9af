"""The admin listener: health, readiness, metrics and the operator API.

Handlers live here once. With several workers, each worker serves this app on a private unix
socket and the supervisor's admin listener forwards to them (see `gateway.supervisor`), so
every call acts on every worker through this same code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import os
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway import adminauth, metrics
from gateway.metrictally import TALLY
from gateway.problem import problem

if TYPE_CHECKING:
    from gateway.server import GatewayProcess

PROCESS: web.AppKey[GatewayProcess] = web.AppKey("process")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every admin call passes here first; `gateway.adminauth` decides which need the token."""
    admin = request.app[PROCESS].pipeline.runtime.config.admin
    refusal = adminauth.check(request.path, request.headers.get("Authorization"), admin,
                              adminauth.configured_token(admin, os.environ))
    if refusal is None:
        return await handler(request)
    headers = {"WWW-Authenticate": refusal.challenge} if refusal.challenge else None
    return problem(refusal.status, refusal.detail, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    process = request.app[PROCESS]
    ready, why = await process.readiness()
    status = 200 if ready else 503
    return web.json_response({"status": "ready" if ready else "not ready", "detail": why},
                             status=status)


# The supervisor's ask before it renders a scrape itself: apply, answer nothing. Rendering
# reads and merges every worker's files, work the supervisor would throw away, done on the
# worker's event loop between requests.
APPLY_ONLY = "X-Gateway-Apply-Only"


async def metrics_text(request: web.Request) -> web.Response:
    TALLY.apply_all()  # this worker's figures up to now, held-back counter groups included
    if APPLY_ONLY in request.headers:
        return web.Response(status=204)
    return web.Response(body=metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _plain(value: Any) -> Any:
    """orjson's fallback for what config records hold besides plain data."""
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, (frozenset, set)):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def redact_url(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host (a password never leaves the process)."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", re.sub(r"//([^:@/]+)@", "//***@", url))


def config_document(config: Any) -> dict[str, Any]:
    document: dict[str, Any] = dataclasses.asdict(config)
    if document.get("redis"):
        document["redis"]["url"] = redact_url(document["redis"]["url"])
    for rule in document["flags"].values():
        for target in rule["targeting"]:
            target.pop("compiled", None)
    return document


async def show_config(request: web.Request) -> web.Response:
    config = request.app[PROCESS].pipeline.runtime.config
    body = orjson.dumps(config_document(config), default=_plain, option=orjson.OPT_INDENT_2)
    return web.Response(body=body, content_type="application/json")


async def show_admission(request: web.Request) -> web.Response:
    """Per upstream: the limit, requests in flight and queue depth per class (this worker's;
    the supervisor sums its workers')."""
    services = request.app[PROCESS].services
    report = services.gates.report() if services is not None else {"upstreams": {}}
    return web.Response(body=orjson.dumps(report, option=orjson.OPT_INDENT_2),
                        content_type="application/json")


async def reload_config(request: web.Request) -> web.Response:
    ok, outcome = await request.app[PROCESS].reload()
    if ok:
        return web.json_response({"status": "reloaded", "summary": outcome})
    return problem(400, "the new configuration has errors; the running one is kept",
                   errors=outcome)


class Refused(Exception):
    """Raised by admin handlers to answer with `response` (a problem) at once."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


async def json_object(request: web.Request, what: str) -> dict[str, Any]:
    """The request body as a JSON object, or Refused with a 400 that says what is wrong."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(problem(400, f"the body is not valid JSON: {exc}")) from None
    if not isinstance(body, dict):
        raise Refused(problem(400, f"{what} must be a JSON object, got {type(body).__name__}"))
    return body


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin errors speak problem+json too, including unknown paths and wrong methods."""
    try:
        return await handler(request)
    except Refused as refused:
        return refused.response
    except web.HTTPMethodNotAllowed as exc:
        return problem(405, f"{request.method} is not allowed on {request.path}",
                       headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
    except web.HTTPNotFound:
        return problem(404, f"no admin endpoint at {request.path}")
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "admin request bodies are limited to 1 MiB")


def build_admin_app(process: GatewayProcess) -> web.Application:
    app = web.Application(client_max_size=1024**2, middlewares=[guard, problems])
    app[PROCESS] = process
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/admin/config", show_config)
    app.router.add_post("/admin/reload", reload_config)
    app.router.add_get("/admin/admission", show_admission)
    for register in ADMIN_ROUTES:
        register(app)
    return app


# Later stages add their admin endpoints here: each entry registers routes on the app.
ADMIN_ROUTES: list[Callable[[web.Application], None]] = []
