"""The one walk every request takes: route -> context -> limits -> flags -> cache -> upstream.

The pipeline owns the order and the error answers; each stage is a separate module reached
through the small interfaces in `gateway.stages`. Flags are evaluated before the cache lookup
(the order is otherwise the contract's) because the flag headers are part of the request
the upstream sees, and a response that varies on them (`Vary: X-Flag-...`) must be looked up
with them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING

from aiohttp import HttpVersion10, hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway import metrics
from gateway.accesslog import AccessLog, AccessRecord
from gateway.admission import Gate, Overloaded, admitted, rank_of
from gateway.compression import IF_NONE_MATCH, IF_RANGE, Compressor
from gateway.config.model import Config, EscapedSlashes, Route
from gateway.context import (
    RequestContext,
    build_context,
    classify,
    client_address,
    identity_headers,
)
from gateway.hitlane import HitLane, Seen
from gateway.hygiene import drop_underscored, first_values_only
from gateway.metrictally import TALLY
from gateway.problem import problem
from gateway.proxy import (
    Exchange,
    Fetch,
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
from gateway.target import BadTarget, Target, TargetReader, TargetRules, without_params
from gateway.wire.h1client import BodyTooLarge, UpstreamError
from gateway.wire.server import repeated_bytes

if TYPE_CHECKING:
    from gateway.cache.assets import AssetRules
    from gateway.experiments.engine import Experiments

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
    experiments: Experiments | None = None  # None: the config has no experiment
    gates: Mapping[str, Gate] = field(default_factory=dict)  # upstreams with admission
    compressor: Compressor | None = None  # None: no compression block
    assets: AssetRules | None = None  # None: no asset policy nor immutable path
    identity: tuple[str, ...] = ()
    flag_prefix: str = "x-flag-"
    flag_summary: str | None = "x-feature-flags"
    targets: TargetReader = field(default_factory=TargetReader)
    keep_underscores: bool = False  # listen.underscores_in_headers
    # Identity fields forwarded with one value (the client-IP header is a list: appended to).
    single_identity: tuple[istr, ...] = ()
    # Per cached route, the query parameters its key ignores, which the upstream never gets.
    ignore_query: dict[str, frozenset[str]] = field(default_factory=dict)
    # Whether a stage does anything at all: a pass-through one is not even called, which
    # saves a coroutine (and the cache's fetch closure) per request on a bare route.
    limited: bool = field(init=False)
    cached: bool = field(init=False)
    # The fields of a request to the upstream made from the peer, lower case: the same
    # request bytes from another peer differ in them (what a repeat must not vary on).
    peer_made: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.limited = not isinstance(self.limiter, NoLimits)
        self.cached = not isinstance(self.cache, NoCache)
        # The identity fields (lower case already) hold the client-IP header, appended to;
        # the rest are dropped unless the peer is trusted.
        self.peer_made = frozenset(
            {*self.identity, "x-forwarded-proto", "x-forwarded-host", "x-request-id"})

    @classmethod
    def build(cls, config: Config, upstreams: UpstreamPool, **stages: object) -> Runtime:
        for route in config.routes:  # children at load, not per request (STYLE)
            metrics.REQUEST_DURATION_BY(route.name)
        return cls(
            config=config,
            router=Router(config.routes),
            upstreams=upstreams,
            identity=identity_headers(config.context),
            targets=TargetReader(TargetRules(
                merge_slashes=config.listen.merge_slashes,
                reject_escaped_slashes=config.listen.escaped_slashes is EscapedSlashes.REJECT)),
            keep_underscores=config.listen.underscores_in_headers,
            single_identity=tuple(istr(name) for name in identity_headers(config.context)
                                  if name != config.context.client_ip.header.lower()),
            ignore_query={route.name: frozenset(route.cache.ignore_query)
                          for route in config.routes
                          if route.cache is not None and route.cache.ignore_query},
            flag_prefix=config.flag_headers.prefix.lower(),
            flag_summary=(config.flag_headers.summary or "").lower() or None,
            **stages,  # type: ignore[arg-type]
        )


def _header_bytes(request: web.BaseRequest) -> int:
    """Each field line as "name: value" + CRLF; summed in C, without a generator."""
    raw = request.raw_headers
    return sum(map(len, chain.from_iterable(raw))) + 4 * len(raw)


def _is_websocket(headers: CIMultiDictProxy[str]) -> bool:
    return (headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in headers.get("Connection", "").lower())


async def _fetch(rt: Runtime, route: Route, out: Outgoing, record: AccessRecord) -> Exchange:
    began = time.perf_counter()
    try:
        exchange = await rt.upstreams.send(out)
    finally:
        spent = time.perf_counter() - began
        record.upstream_duration = spent
        TALLY.observe(metrics.UPSTREAM_DURATION_BY(route.name, out.upstream), spent)
    if rt.assets is not None:  # before the cache reads the lifetimes (gateway/cache/assets.py)
        rt.assets.apply(route.name, record.path, exchange.status, exchange.headers)
    return exchange


def _admitting(gate: Gate, rank: int, fetch: Fetch) -> Fetch:
    """`fetch` once the upstream's gate admits the request (in priority class `rank`)."""
    return lambda out: admitted(gate, rank, fetch, out)


def _rank(config: Config, route: Route, ctx: RequestContext | None,
          request: web.BaseRequest, headers: CIMultiDictProxy[str]) -> int:
    """The request's admission class: its route's, moved by its subscription tier."""
    by_tier = config.context.priority_by_tier
    tier = (ctx or _context(config, request, headers)[0]).subscription_tier if by_tier \
        else None
    return rank_of(route.priority, tier, by_tier)


def _context(config: Config, request: web.BaseRequest, headers: CIMultiDictProxy[str]
             ) -> tuple[RequestContext, bool]:
    """The request's context, and whether its peer is a trusted proxy."""
    return build_context(config.context, request.remote or "", headers,
                         environment=config.environment)


def _target(rt: Runtime, request: web.BaseRequest, headers: CIMultiDictProxy[str]) -> Target:
    """The canonical target (gateway/target.py): after this, nothing reads the request's
    own path, query or Host."""
    return rt.targets.read(request.raw_path, headers.getall(hdrs.HOST, ()),
                           request.version != HttpVersion10)


class Pipeline:
    def __init__(self, runtime: Runtime, access_log: AccessLog | None = None) -> None:
        self.runtime = runtime
        self.access_log = access_log
        self.lane = HitLane(self, new_request_id)  # repeated fresh hits (gateway.hitlane)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime  # one config for the whole request, whatever a reload does meanwhile
        started = time.perf_counter()
        sent_id = request.headers.get("X-Request-Id")  # a name without "_": never dropped
        request_id = sent_id if sent_id and _REQUEST_ID.match(sent_id) else new_request_id()
        record = AccessRecord(request_id=request_id, method=request.method,
                              path="", client_ip=request.remote or "")
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
            if record.experiment is not None:  # what the request's experiments observe
                record.experiment.answered(record.status, record.upstream_duration)
            if self.access_log is not None:
                self.access_log.write(record)

    async def _walk(self, rt: Runtime, request: web.BaseRequest, request_id: str,
                    record: AccessRecord) -> web.StreamResponse:
        config = rt.config
        # Before anything reads a field (gateway/hygiene.py).
        headers = request.headers
        if not rt.keep_underscores and "_" in "".join(headers):  # the names, joined
            headers = drop_underscored(headers)
        try:
            target = _target(rt, request, headers)
        except BadTarget as exc:
            record.path = request.raw_path  # the refused target as it came, for the log only
            return problem(400, str(exc), request_id)
        record.path = target.path
        if _header_bytes(request) > config.listen.max_header_size:
            return problem(431, f"the request header section is larger than "
                           f"{config.listen.max_header_size} bytes", request_id)
        found = rt.router.match(request.method, target.path, target.authority, headers)
        if found is None:
            return problem(404, f"no route matches {request.method} {target.path}", request_id)
        if isinstance(found, MethodNotAllowed):
            return problem(405, f"{request.method} is not allowed here", request_id,
                           headers={"Allow": ", ".join(found.allow)})
        route = found.route
        record.route = route.name
        compressor = rt.compressor
        if compressor is not None and route.name in compressor.routes and (
                headers.get(IF_NONE_MATCH) is not None or headers.get(IF_RANGE) is not None):
            headers = compressor.plain_request(headers)  # coded validators (README)

        flagged = bool(route.flags or route.all_flags)
        limited = rt.limited and bool(route.rate_limits)  # only a route's own rules apply
        ctx: RequestContext | None = None
        trusted: bool | None = None  # whether the peer is a trusted proxy, once asked
        # The whole context feeds limits only; a route without rules never builds one. Its
        # flags then read just the fields they use (FlagStage.by_headers), the access log
        # just the client address, and the upstream header policy asks only whether the
        # peer is trusted.
        if limited:
            ctx, trusted = _context(config, request, headers)
            record.client_ip = ctx.client_ip
        elif self.access_log is not None:
            record.client_ip, trusted = client_address(config.context, request.remote or "",
                                                       headers)
        websocket = _is_websocket(headers)

        length = request.content_length
        if route.max_body is not None and length is not None and length > route.max_body:
            return problem(413, f"the request body ({length} bytes) is larger than this "
                           f"route's limit of {route.max_body} bytes", request_id)

        # What the cache key leaves out never reaches the upstream either.
        ignored = rt.ignore_query.get(route.name)
        qs = without_params(target.qs, ignored) if ignored else target.qs
        # What the cache keys on; nobody else reads it.
        client_url = f"{request.scheme}://{target.authority}{target.path}{qs}" if rt.cached \
            else ""
        # The cache's L2 read is asked for before the limiter decides, so the two leave for
        # Redis in one write: one round trip for both (a refused request's read is wasted).
        ahead = rt.cache.look_ahead(route, request.method, client_url, headers) \
            if limited and rt.cached else None
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
                if trusted is None:  # else the access log's client address asked already
                    trusted = classify(peer, config.context.trusted_proxies)[1]
                from_headers = rt.flags.by_headers.get(route.name)
                if from_headers is not None:
                    flags = from_headers(headers, peer, trusted, time.time())
        if rt.experiments is not None:
            record.experiment = rt.experiments.on_request(route.name, flags, ctx, headers,
                                                          request.remote or "")
        expect = headers.get("Expect", "").lower() == "100-continue"

        def upstream_headers() -> CIMultiDict[str]:
            peer_trusted = (trusted if trusted is not None else
                            classify(request.remote or "", config.context.trusted_proxies)[1])
            sent = self._upstream_headers(rt, request, headers, target, peer_trusted,
                                          request_id, websocket)
            for name, value in verdict.upstream_headers:
                sent[name] = value
            if expect:
                sent.popall("Expect", None)  # answered here (below), not by the upstream
            return sent

        upstream = verdict.upstream or route.upstream.for_method(request.method)
        record.upstream = upstream
        gate = rt.gates.get(upstream) if rt.gates else None  # admission control, if any
        response_headers = [*verdict.response_headers, ("X-Request-Id", request_id)]
        path_qs = strip(target.path, route.strip_prefix) + qs
        if websocket:
            from gateway.websocket import proxy_websocket

            sent = upstream_headers()
            if flags is not None:
                sent.extend(flags.fields.pairs)
            return await proxy_websocket(request, rt.upstreams, upstream, path_qs, sent,
                                         response_headers, request_id)

        if expect:
            # Only now, with the route, the size and the limits passed, ask for the body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = LimitedBody(request.content, route.max_body) if request.body_exists else None
        out = Outgoing(
            method=request.method,
            path_qs=path_qs,
            # A cached route builds them only if the cache does not answer itself.
            headers=upstream_headers if rt.cached else upstream_headers(),
            body=body,
            upstream=upstream,
            client_url=client_url,
            asked=headers,
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

                # Admission is asked inside the cache's fetch: a hit never waits.
                answer = rt.cache.serve(route, out, fetch if gate is None else _admitting(
                    gate, _rank(config, route, ctx, request, headers), fetch), ahead)
                # A fresh hit comes as it is: nothing to await.
                exchange = answer if isinstance(answer, Exchange) else await answer
            elif gate is None:
                exchange = await _fetch(rt, route, out, record)
            else:
                exchange = await admitted(gate, _rank(config, route, ctx, request, headers),
                                          lambda out: _fetch(rt, route, out, record), out)
            if compressor is not None:
                shaped = compressor.shape(route.name, request.method, request.headers,
                                          exchange, record)
                exchange = shaped if isinstance(shaped, Exchange) else await shaped
        except BodyTooLarge as exc:
            return problem(413, f"the request body is larger than this route's limit of "
                           f"{exc.limit} bytes", request_id, headers={"Connection": "close"})
        except Overloaded as exc:
            return exc.response(request_id)
        except UpstreamError as exc:
            return problem(exc.status, exc.detail, request_id)
        record.cache = exchange.cache_status
        remember = None
        if exchange.cache_status == "HIT" and not (limited or flagged or websocket or expect) \
                and (rt.experiments is None or not rt.experiments.observes(route.name)) \
                and (data := repeated_bytes(request)) is not None and self.lane.again(data) \
                and data not in self.lane.seen:  # else remembered already (its entry had
            # left L1 and came back from L2): what it would make anew is the same
            remember = functools.partial(self._remember, rt, request, exchange, record,
                                         client_url, headers, out.built, data)
        try:
            return await relay(request, exchange, response_headers, remember)
        except UpstreamError as exc:
            # Headers are out already: all we can do is cut the connection, so the client
            # sees a truncated body rather than a complete-looking wrong one.
            log.warning("request %s: %s", request_id, exc.detail)
            record.error = exc.detail
            raise

    def _remember(self, rt: Runtime, request: web.BaseRequest, exchange: Exchange,
                  record: AccessRecord, client_url: str, headers: CIMultiDictProxy[str],
                  sent: CIMultiDict[str] | None, data: bytes) -> None:
        """Hand a hit to the lane (gateway.hitlane) if it is one the lane can repeat; called
        by relay when it writes the answer whole from its serialized stored head (`whole`),
        before it writes it. The caller has checked that no stage but the cache had a part
        in the answer, and that the request's bytes (`data`) came alone, on a connection
        between messages, and came before. `sent`: what the upstream would have got, if the
        cache built it to compare a Vary."""
        if request.body_exists:
            return
        method = request.method
        sent_id = request.headers.get("X-Request-Id")
        self.lane.remember(data, Seen(
            runtime=rt, method=method, scheme=request.scheme, route=record.route or "",
            client_url=client_url,
            asked=headers, sent=sent, accept=headers.get("Accept-Encoding"),
            request_id=sent_id if sent_id == record.request_id else None,
            path=record.path, upstream=record.upstream, ratelimit=record.ratelimit))

    def _upstream_headers(self, rt: Runtime, request: web.BaseRequest,
                          received: CIMultiDictProxy[str], target: Target, trusted: bool,
                          request_id: str, websocket: bool) -> CIMultiDict[str]:
        headers = end_to_end(received, keep_upgrade=websocket)
        if not trusted:
            for name in rt.identity:
                headers.popall(name, None)
        else:  # the one value the context read (gateway/hygiene.py)
            first_values_only(headers, rt.single_identity)
        if target.absolute:  # RFC 9112 §3.2.2: a Host made from the target, not the one sent
            headers[hdrs.HOST] = target.authority
        # A client never chooses its own flags: drop anything in the flag header namespace.
        prefix, summary = rt.flag_prefix, rt.flag_summary
        names = "\n" + "\n".join(headers).lower() + "\n"  # one look for the usual none
        if "\n" + prefix in names or (summary is not None and f"\n{summary}\n" in names):
            for name in [n for n in headers
                         if (low := n.lower()).startswith(prefix) or low == summary]:
                headers.popall(name, None)
        peer = request.remote or ""
        xff = rt.config.context.client_ip.header
        prior = ", ".join(headers.popall(xff, ())) if trusted else ""
        headers[xff] = f"{prior}, {peer}" if prior else peer
        if not (trusted and "X-Forwarded-Proto" in headers):
            headers["X-Forwarded-Proto"] = request.scheme
        if not (trusted and "X-Forwarded-Host" in headers) and target.authority:
            headers["X-Forwarded-Host"] = target.authority
        headers["X-Request-Id"] = request_id
        return headers


__all__ = ["Pipeline", "RequestContext", "Runtime"]
