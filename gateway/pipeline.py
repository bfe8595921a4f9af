"""The one walk every request takes: route -> context -> limits -> flags -> cache -> upstream.

The pipeline owns the order and the error answers; each stage is a separate module reached
through the small interfaces in `gateway.stages`. Flags are evaluated before the cache lookup
(the order is otherwise the contract's) because the flag headers are part of the request
the upstream sees, and a response that varies on them (`Vary: X-Flag-...`) must be looked up
with them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from gateway import metrics
from gateway.accesslog import AccessRecord
from gateway.config.model import Config, Route
from gateway.context import RequestContext, build_context, classify, identity_headers
from gateway.h1client import BodyTooLarge, UpstreamError
from gateway.metrictally import TALLY
from gateway.problem import problem
from gateway.proxy import (
    Exchange,
    LimitedBody,
    Outgoing,
    UpstreamPool,
    end_to_end,
    relay,
)
from gateway.routing import MethodNotAllowed, Router, strip
from gateway.stages import (
    ADMIT,
    CacheStage,
    FlagResult,
    FlagStage,
    NoCache,
    NoFlags,
    NoLimits,
    RateLimitStage,
)

log = logging.getLogger("gateway")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_ID_BATCH = 256
_fresh_ids: list[str] = []


def new_request_id() -> str:
    """32 hex digits from os.urandom, drawn _ID_BATCH ids per system call.

    One getrandom() call per request was the larger part of the id's cost (0.47 us; a
    pop from the batch is ~0.1 us). A forked child drops the batch it inherited, so two
    processes never hand out the same ids.
    """
    if not _fresh_ids:
        pool = os.urandom(16 * _ID_BATCH).hex()
        _fresh_ids.extend([pool[i:i + 32] for i in range(0, len(pool), 32)])
    return _fresh_ids.pop()


os.register_at_fork(after_in_child=_fresh_ids.clear)


@dataclass
class Runtime:
    """Everything one configuration needs to serve; replaced whole on reload."""

    config: Config
    router: Router
    upstreams: UpstreamPool
    limiter: RateLimitStage = field(default_factory=NoLimits)
    cache: CacheStage = field(default_factory=NoCache)
    flags: FlagStage = field(default_factory=NoFlags)
    identity: tuple[str, ...] = ()
    flag_prefix: str = "x-flag-"
    flag_summary: str | None = "x-feature-flags"
    # Whether a stage does anything at all: a pass-through one is not even called, which
    # saves a coroutine (and the cache's fetch closure) per request on a bare route.
    limited: bool = field(init=False)
    cached: bool = field(init=False)

    def __post_init__(self) -> None:
        self.limited = not isinstance(self.limiter, NoLimits)
        self.cached = not isinstance(self.cache, NoCache)

    @classmethod
    def build(cls, config: Config, upstreams: UpstreamPool, **stages: object) -> Runtime:
        for route in config.routes:  # children at load, not per request (STYLE)
            metrics.REQUEST_DURATION_BY(route.name)
        return cls(
            config=config,
            router=Router(config.routes),
            upstreams=upstreams,
            identity=identity_headers(config.context),
            flag_prefix=config.flag_headers.prefix.lower(),
            flag_summary=(config.flag_headers.summary or "").lower() or None,
            **stages,  # type: ignore[arg-type]
        )


def _header_bytes(request: web.BaseRequest) -> int:
    return sum(len(k) + len(v) + 4 for k, v in request.raw_headers)


def _is_websocket(request: web.BaseRequest) -> bool:
    return (request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


async def _fetch(rt: Runtime, route: Route, out: Outgoing, record: AccessRecord) -> Exchange:
    began = time.perf_counter()
    try:
        return await rt.upstreams.send(out, whole_small=not rt.cached)
    finally:
        spent = time.perf_counter() - began
        record.upstream_duration = spent
        TALLY.observe(metrics.UPSTREAM_DURATION_BY(route.name, out.upstream), spent)


def _context(config: Config, request: web.BaseRequest) -> tuple[RequestContext, bool]:
    """The request's context, and whether its peer is a trusted proxy."""
    return build_context(config.context, request.remote or "", request.headers,
                         environment=config.environment)


class Pipeline:
    def __init__(self, runtime: Runtime, access_log: logging.Logger | None = None) -> None:
        self.runtime = runtime
        self.access_log = access_log

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime  # one config for the whole request, whatever a reload does meanwhile
        started = time.perf_counter()
        sent_id = request.headers.get("X-Request-Id")
        request_id = sent_id if sent_id and _REQUEST_ID.match(sent_id) else new_request_id()
        record = AccessRecord(request_id=request_id, method=request.method,
                              path=request.path, client_ip=request.remote or "")
        TALLY.started()
        response: web.StreamResponse | None = None
        try:
            response = await self._walk(rt, request, request_id, record)
            return response
        except asyncio.CancelledError:
            record.status = 499  # the client went away (nginx's convention)
            raise
        finally:
            if response is not None:
                record.status = response.status
                record.bytes = response.body_length
            duration = time.perf_counter() - started
            record.duration = duration
            route_label = record.route or "(none)"
            TALLY.finished(route_label, metrics.method_label(request.method),
                           str(record.status), duration)
            if self.access_log is not None:
                self.access_log.info(record.to_json())

    async def _walk(self, rt: Runtime, request: web.BaseRequest, request_id: str,
                    record: AccessRecord) -> web.StreamResponse:
        config = rt.config
        if _header_bytes(request) > config.listen.max_header_size:
            return problem(431, f"the request header section is larger than "
                           f"{config.listen.max_header_size} bytes", request_id)
        found = rt.router.match(request.method, request.path, request.host, request.headers)
        if found is None:
            return problem(404, f"no route matches {request.method} {request.path}", request_id)
        if isinstance(found, MethodNotAllowed):
            return problem(405, f"{request.method} is not allowed here", request_id,
                           headers={"Allow": ", ".join(found.allow)})
        route = found.route
        record.route = route.name

        flagged = bool(route.flags or route.all_flags)
        limited = rt.limited and bool(route.rate_limits)  # only a route's own rules apply
        ctx: RequestContext | None = None
        trusted: bool | None = None  # whether the peer is a trusted proxy, once asked
        # The context feeds limits and the access log; a route that has neither never builds
        # one. Its flags then read just the fields they use (FlagStage.by_headers), and
        # the upstream header policy asks only whether the peer is trusted.
        if limited or self.access_log is not None:
            ctx, trusted = _context(config, request)
            record.client_ip = ctx.client_ip
        websocket = _is_websocket(request)

        length = request.content_length
        if route.max_body is not None and length is not None and length > route.max_body:
            return problem(413, f"the request body ({length} bytes) is larger than this "
                           f"route's limit of {route.max_body} bytes", request_id)

        verdict = (await rt.limiter.check(route, ctx, request, request_id)
                   if limited and ctx is not None else ADMIT)
        record.ratelimit = verdict.outcome
        if verdict.refusal is not None:
            verdict.refusal.headers["X-Request-Id"] = request_id
            for name, value in verdict.response_headers:
                verdict.refusal.headers[name] = value
            return verdict.refusal
        flags: FlagResult | None = None
        if flagged:  # the deciders count what they decide
            if ctx is not None:
                decide = rt.flags.by_context.get(route.name)
                if decide is not None:
                    flags = decide(ctx, time.time())
            else:
                peer = request.remote or ""
                trusted = classify(peer, config.context.trusted_proxies)[1]
                from_headers = rt.flags.by_headers.get(route.name)
                if from_headers is not None:
                    flags = from_headers(request.headers, peer, trusted, time.time())
        expect = request.headers.get("Expect", "").lower() == "100-continue"

        def upstream_headers() -> CIMultiDict[str]:
            peer_trusted = (trusted if trusted is not None else
                            classify(request.remote or "", config.context.trusted_proxies)[1])
            headers = self._upstream_headers(rt, request, peer_trusted, request_id, websocket)
            for name, value in verdict.upstream_headers:
                headers[name] = value
            if expect:
                headers.popall("Expect", None)  # answered here (below), not by the upstream
            return headers

        upstream = verdict.upstream or route.upstream.for_method(request.method)
        record.upstream = upstream
        response_headers = [*verdict.response_headers, ("X-Request-Id", request_id)]
        if websocket:
            from gateway.websocket import proxy_websocket

            headers = upstream_headers()
            if flags is not None:
                headers.extend(flags.fields.pairs)
            return await proxy_websocket(request, rt.upstreams, upstream,
                                         strip(request.raw_path, route.strip_prefix),
                                         headers, response_headers, request_id)

        if expect:
            # Only now, with the route, the size and the limits passed, ask for the body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = LimitedBody(request.content, route.max_body) if request.body_exists else None
        out = Outgoing(
            method=request.method,
            path_qs=strip(request.raw_path, route.strip_prefix),
            # A cached route builds them only if the cache does not answer itself.
            headers=upstream_headers if rt.cached else upstream_headers(),
            body=body,
            upstream=upstream,
            # What the cache keys on; nobody else reads it.
            client_url=f"{request.scheme}://{request.host}{request.raw_path}" if rt.cached
            else "",
            asked=request.headers,
            # The flag namespace was emptied of what the client sent: these are added as
            # they are (serialized once per outcome, not per request).
            added=flags.fields if flags is not None else None,
            # Interim answers (103 Early Hints...) go to the client ahead of the final one
            # (RFC 9110 §15.2), if it speaks HTTP/1.1.
            interim=request,
        )

        try:
            if rt.cached:
                def fetch(out: Outgoing) -> Awaitable[Exchange]:
                    return _fetch(rt, route, out, record)

                answer = rt.cache.serve(route, out, fetch)
                # A fresh hit comes as it is: nothing to await.
                exchange = answer if isinstance(answer, Exchange) else await answer
            else:
                exchange = await _fetch(rt, route, out, record)
        except BodyTooLarge as exc:
            return problem(413, f"the request body is larger than this route's limit of "
                           f"{exc.limit} bytes", request_id, headers={"Connection": "close"})
        except UpstreamError as exc:
            return problem(exc.status, exc.detail, request_id)
        record.cache = exchange.cache_status
        try:
            return await relay(request, exchange, response_headers)
        except UpstreamError as exc:
            # Headers are out already: all we can do is cut the connection, so the client
            # sees a truncated body rather than a complete-looking wrong one.
            log.warning("request %s: %s", request_id, exc.detail)
            record.error = exc.detail
            raise

    def _upstream_headers(self, rt: Runtime, request: web.BaseRequest, trusted: bool,
                          request_id: str, websocket: bool) -> CIMultiDict[str]:
        headers = end_to_end(request.headers, keep_upgrade=websocket)
        if not trusted:
            for name in rt.identity:
                headers.popall(name, None)
        # A client never chooses its own flags: drop anything in the flag header namespace.
        prefix, summary = rt.flag_prefix, rt.flag_summary
        for name in [n for n in headers
                     if (low := n.lower()).startswith(prefix) or low == summary]:
            headers.popall(name, None)
        peer = request.remote or ""
        xff = rt.config.context.client_ip.header
        prior = ", ".join(headers.popall(xff, ())) if trusted else ""
        headers[xff] = f"{prior}, {peer}" if prior else peer
        if not (trusted and "X-Forwarded-Proto" in headers):
            headers["X-Forwarded-Proto"] = request.scheme
        if not (trusted and "X-Forwarded-Host" in headers) and request.host:
            headers["X-Forwarded-Host"] = request.host
        headers["X-Request-Id"] = request_id
        return headers


__all__ = ["Pipeline", "RequestContext", "Runtime"]
