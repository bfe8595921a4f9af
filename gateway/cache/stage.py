"""The cache stage: asks gateway.cache.policy what to do and does it (lookups, upstream calls,
stores, collapsing, background refresh). One per runtime; the stores live in CacheService.

Collapsing: concurrent misses for one URL wait for a single upstream fetch (a `Flight`). The
leader streams its response to its own client while a copy is kept (up to max_object_size);
when the copy is complete it is stored and the waiters look up again and hit. A response that
cannot be stored (or is too large) releases the waiters at once to go upstream themselves and
marks the URL hit-for-miss, so later requests skip the queue (Varnish's hit-for-miss). Waiters
give up waiting after the upstream's timeout, since the leader's client sets the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Container,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway import metrics
from gateway.cache import policy as rfc
from gateway.cache.directives import field_values, vary_names
from gateway.cache.entry import Entry
from gateway.cache.key import url_key, variant_id, vary_values
from gateway.cache.service import CacheService, Flight
from gateway.config.model import Config, Route, RouteCache
from gateway.context import remember
from gateway.metrictally import TALLY
from gateway.proxy import Exchange, Fetch, Outgoing, StoredHead, field_lines
from gateway.wire.aiohttp_io import SERVER_SOFTWARE
from gateway.wire.h1client import UpstreamError

log = logging.getLogger("gateway.cache")

RESULTS = ("hit", "stale", "revalidated", "miss", "bypass")
ATTEMPTS = 3  # lookups a waiter makes before it fetches on its own


KEY_MEMO = 1024  # client URLs whose cache key a route remembers (cleared whole when full)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    name: str
    cache: RouteCache
    ignore: frozenset[str]
    wait: float  # how long a collapsed request waits for the leader
    # Per-request work done once: the metric children (created at load, STYLE) and the cache
    # key of each recent client URL (url_key parses and sorts the query every time).
    counters: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    keys: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # What client_headers drops from a stored response served with Age: keys Entry.client.
    hit_drop: frozenset[str] = frozenset()
    # What it drops from a response passed through unstored.
    pass_drop: tuple[str, ...] = ()

    def count(self, result: str) -> None:
        TALLY.inc(self.counters[result])

    def key(self, client_url: str) -> str:
        key = self.keys.get(client_url)
        if key is None:  # bounded: a scan of distinct URLs costs what it did before
            key = remember(self.keys, client_url, url_key(client_url, self.ignore), KEY_MEMO)
        return key


class ResponseCache:
    def __init__(self, service: CacheService, config: Config) -> None:
        self.service = service
        self.policies: dict[str, RoutePolicy] = {}
        for route in config.routes:
            if route.cache is None:
                continue
            upstream = config.upstreams.get(route.upstream.read)
            wait = upstream.timeout if upstream is not None else 30.0
            policy = RoutePolicy(route.name, route.cache, frozenset(route.cache.ignore_query),
                                 wait, hit_drop=rfc.dropped_fields(route.cache, stored=True,
                                                                   age=True),
                                 pass_drop=tuple(map(istr, rfc.dropped_fields(
                                     route.cache, stored=False, age=False))))
            for result in RESULTS:  # children at load, not per request (STYLE)
                policy.counters[result] = metrics.CACHE_LOOKUPS.labels(route.name, result)
            self.policies[route.name] = policy
        service.configure(config.cache, frozenset(p.ignore for p in self.policies.values()))

    def look_ahead(self, route: Route, method: str, client_url: str,
                   asked: Mapping[str, str]) -> asyncio.Future[Any] | None:
        """The L2 read `serve` would make for this request, asked for now (while the rate
        limiter decides, so both leave in one write), or None if it would make none."""
        p = self.policies.get(route.name)
        if p is None or self.service.l2 is None or method not in ("GET", "HEAD") or \
                _any_field(asked, rfc.BYPASS_REQUEST_FIELDS):
            return None
        return self.service.read_ahead(p.key(client_url))

    def serve(self, route: Route, out: Outgoing, fetch: Fetch,
              ahead: asyncio.Future[Any] | None = None) -> Exchange | Awaitable[Exchange]:
        """The answer itself for a fresh L1 hit (the usual hit: no coroutine, nothing
        awaited), else an awaitable of it. `ahead`: `look_ahead`'s read."""
        p = self.policies.get(route.name)
        if p is None:
            if out.method not in rfc.SAFE_METHODS:
                # §4.4 binds the cache, not the route: a POST routed elsewhere (a GET-only
                # cached route falls through to a catch-all) still invalidates the URL.
                return self._unsafe(None, out, fetch)
            return fetch(out)  # no cache policy: cost nothing
        if out.method not in rfc.SAFE_METHODS:  # any other name, extensions included (§4.4)
            return self._unsafe(p, out, fetch)
        asked = out.asked
        # The usual request has none of them: one look for all, in C (without a frame).
        plain = asked.keys().isdisjoint(_ASKS_MORE)
        if out.method not in ("GET", "HEAD") or out.body is not None or (
                not plain and _any_field(asked, rfc.BYPASS_REQUEST_FIELDS)):
            return self._bypass(p, out, fetch)
        key = p.keys.get(out.client_url) or p.key(out.client_url)  # a frame less when known
        svc = self.service
        stored: Entry | None = None
        # A URL with nothing in L1 (every miss) is told by one dict look, without a frame.
        if key in svc.memory.by_url:
            now = time.time()
            stored = svc.lookup_memory(key, out.sent_headers, now)
            if stored is not None:
                age = stored.age(now)
                if rfc.evaluate(stored.fresh, age, asked) is rfc.Use.FRESH:
                    return self._hit(p, stored, out, age, plain)
        if stored is None and plain and svc.l2 is None and out.method == "GET" and \
                svc.is_hit_for_miss(key):
            # Hit-for-miss with nothing stored anywhere: what `_read` would conclude after
            # its lookups, without them (and without the collapsing machinery).
            return self._hit_for_miss(p, key, out, fetch)
        return self._read(p, key, out, fetch, stored, ahead, plain)

    async def _hit_for_miss(self, p: RoutePolicy, key: str, out: Outgoing, fetch: Fetch
                            ) -> Exchange:
        """`_exchange` with nothing stored and a request that goes upstream as it came (no
        validators or range of the client's to take out): an answer that still may not be
        stored is passed on after one look at it, the key hit-for-miss for another
        HIT_FOR_MISS seconds from this answer; one that may be stored now is stored."""
        request_time = time.time()
        exchange = await fetch(out)
        response_time = time.time()
        TALLY.inc(p.counters["miss"])
        reason = rfc.not_storable_reason("GET", exchange.status, exchange.headers, out.headers,
                                         p.cache)
        if reason is None:
            settled = self._settle(p, key, out, exchange, None, None, "miss", request_time,
                                   response_time, _no_waiters)
            return settled if isinstance(settled, Exchange) else await settled
        self.service.mark_hit_for_miss(key)
        return self._pass(p, exchange, "MISS", rfc.unstored_status("miss", exchange.status,
                                                                    reason))

    async def _bypass(self, p: RoutePolicy, out: Outgoing, fetch: Fetch) -> Exchange:
        return self._pass(p, await fetch(out), "BYPASS", rfc.cache_status(
            hit=False, fwd="bypass"))

    def _hit(self, p: RoutePolicy, entry: Entry, out: Outgoing, age: float,
             plain: bool = False) -> Exchange:
        """A fresh entry's answer (RFC 9211: ttl is the freshness left). `plain`: the
        request is known to ask for the stored whole (no validators, no range)."""
        p.count("hit")
        return self._from_entry(p, entry, out, age, "HIT",
                                rfc.hit_status(entry.fresh.lifetime - age), plain)

    # ------------------------------------------------------------ GET / HEAD
    async def _read(self, p: RoutePolicy, key: str, out: Outgoing, fetch: Fetch,
                    in_memory: Entry | None, ahead: asyncio.Future[Any] | None = None,
                    plain: bool = False) -> Exchange:
        """Everything but a fresh L1 hit; `in_memory` is what `serve` found in L1 (stale, or
        not fresh enough for this request), looked up again only after waiting; `ahead`:
        the L2 read of the first lookup, already asked for; `plain`: as for `_hit`."""
        svc = self.service
        stale: Entry | None = None
        for attempt in range(ATTEMPTS):
            now = time.time()
            stale = in_memory if attempt == 0 else svc.lookup_memory(key, out.sent_headers, now)
            if stale is None and svc.l2 is not None:
                stale = await svc.lookup_shared(key, out.sent_headers, now, ahead)
            ahead = None
            if stale is not None:
                age = stale.age(now)
                ttl = stale.fresh.lifetime - age  # Entry.ttl(now), the age computed once
                use = rfc.evaluate(stale.fresh, age, out.asked)
                if use is rfc.Use.FRESH:
                    return self._hit(p, stale, out, age, plain)
                if use is rfc.Use.STALE_WHILE_REVALIDATE:
                    self._refresh_later(p, key, stale, out, fetch)
                    p.count("stale")
                    return self._from_entry(p, stale, out, age, "STALE", rfc.cache_status(
                        hit=True, ttl=ttl, detail="stale-while-revalidate"))
            if out.method == "HEAD" and stale is None:
                # A HEAD answer has no body to store; forward it without holding anyone up.
                return self._pass(p, await fetch(out), "MISS",
                                  rfc.cache_status(hit=False, fwd="miss"))
            if out.method == "GET" and "Range" in out.asked:
                return await self._partial(p, out, fetch, stale)
            if svc.is_hit_for_miss(key):
                return await self._fetch(p, key, out, fetch, stale, None)
            flight = svc.flights.get(key)
            if flight is None:
                flight = svc.flights[key] = Flight()
                return await self._fetch(p, key, out, fetch, stale, flight)
            try:
                async with asyncio.timeout(p.wait):
                    await flight.wait()
            except TimeoutError:
                break
        return await self._fetch(p, key, out, fetch, stale, None)

    async def _fetch(self, p: RoutePolicy, key: str, out: Outgoing, fetch: Fetch,
                     stale: Entry | None, flight: Flight | None) -> Exchange:
        """Go upstream (conditionally when a stale entry has validators) and store what we may."""
        svc = self.service
        finish: Callable[[bool], None] = flight.finish if flight else _no_waiters
        if flight is not None:
            def finish(stored: bool) -> None:
                assert flight is not None
                flight.finish(stored)
                if svc.flights.get(key) is flight:
                    del svc.flights[key]
        try:
            return await self._exchange(p, key, out, fetch, stale, finish)
        except BaseException:
            finish(False)
            raise

    async def _exchange(self, p: RoutePolicy, key: str, out: Outgoing, fetch: Fetch,
                        stale: Entry | None, finish: Callable[[bool], None]) -> Exchange:
        svc = self.service
        upstream_out = _conditional(out, stale)
        request_time = time.time()
        fwd = "miss" if stale is None else rfc.forward_reason(stale.fresh,
                                                              stale.age(request_time))
        try:
            exchange = await fetch(upstream_out)
        except UpstreamError as exc:
            finish(False)
            served = self._stale_on_error(p, stale, out, exc.status)
            if served is None:
                raise
            return served
        response_time = time.time()
        if exchange.status in rfc.ERROR_STATUSES and stale is not None:
            served = self._stale_on_error(p, stale, out, exchange.status)
            if served is not None:
                exchange.release()
                finish(False)
                return served
        if exchange.status == 304 and stale is not None:
            entry = _freshened(stale, exchange, p.cache, request_time, response_time)
            exchange.release()
            svc.store(entry)
            finish(True)
            p.count("revalidated")
            answer = self._from_entry(p, entry, out, entry.age(response_time), "REVALIDATED",
                                      rfc.cache_status(hit=False, fwd=fwd, fwd_status=304,
                                                       ttl=entry.ttl(response_time)))
            if not p.cache.store_set_cookie:  # for this client only, never stored
                answer.headers.extend(("Set-Cookie", v) for v in
                                      field_values(exchange.headers, "Set-Cookie"))
            return answer
        p.count("miss")
        reason = rfc.not_storable_reason("GET", exchange.status, exchange.headers,
                                         upstream_out.headers, p.cache)
        settled = self._settle(p, key, out, exchange, reason, stale, fwd, request_time,
                               response_time, finish)
        return settled if isinstance(settled, Exchange) else await settled

    def _settle(self, p: RoutePolicy, key: str, out: Outgoing, exchange: Exchange,
                reason: str | None, stale: Entry | None, fwd: str, request_time: float,
                response_time: float, finish: Callable[[bool], None]
                ) -> Exchange | Awaitable[Exchange]:
        """A complete answer (no 304) and `reason`, rfc.not_storable_reason's verdict on it:
        stored as it streams to the client if nothing else forbids it (its freshness, its
        size), else passed on and the key made hit-for-miss. An awaitable only when the
        client asked conditionally and the body must be whole before it is answered."""
        svc = self.service
        # Freshness (dates parsed and all) only for what may be stored.
        fresh = rfc.freshness(exchange.status, exchange.headers, p.cache, response_time) \
            if reason is None else None
        if fresh is not None and not rfc.worth_storing(fresh, exchange.headers):
            reason = "no-freshness"
        length = exchange.headers.get("Content-Length", "")
        body = exchange.body
        limit = svc.settings.max_object_size
        if reason is None and ((length.isdigit() and int(length) > limit) or (
                isinstance(body, bytes) and len(body) > limit)):
            reason = "too-large"
        if reason is not None:
            svc.mark_hit_for_miss(key)
            if stale is not None:
                svc.forget(stale)  # the upstream no longer lets us keep it
            finish(False)
            return self._pass(p, exchange, "MISS", rfc.unstored_status(fwd, exchange.status,
                                                                        reason))
        assert fresh is not None
        svc.clear_hit_for_miss(key)
        names = vary_names(field_values(exchange.headers, "Vary")) or ()
        values = vary_values(names, out.headers)
        # The entry's fields but its body, to build it once the body is whole (an Entry
        # built directly: dataclasses.replace of a template costs as much again).
        fields = (key, variant_id(names, values), names, values, exchange.status,
                  exchange.reason or "", CIMultiDictProxy(CIMultiDict(exchange.headers)))
        later = (rfc.initial_age(exchange.headers, request_time, response_time),
                 response_time, fresh, rfc.tags_of(exchange.headers, p.cache))

        def complete(body: bytes) -> None:
            svc.store(Entry(*fields, body, *later))
            finish(True)

        def abandon() -> None:
            svc.mark_hit_for_miss(key)  # too large: don't make others queue for it again
            finish(False)

        status = rfc.cache_status(hit=False, fwd=fwd, fwd_status=exchange.status, stored=True)
        if length.isdigit() and _any_field(out.asked, rfc.CLIENT_CONDITIONALS):
            # The client asked conditionally and the body is known to fit: keep it, then
            # answer the client from the entry (a 304 when its validators match, §4.3.2).
            async def whole_then_answer() -> Exchange:
                whole = body if isinstance(body, bytes) else await _read_all(body, limit)
                exchange.release()
                if whole is None:
                    raise UpstreamError(502, "the upstream sent more than its Content-Length")
                complete(whole)
                return self._from_entry(p, Entry(*fields, whole, *later), out, None, "MISS",
                                        status)

            return whole_then_answer()
        exchange.headers = rfc.client_headers(exchange.headers.items(), p.cache, stored=True)
        if out.method == "HEAD" and not isinstance(body, bytes):
            # The HEAD went upstream as a GET to refresh its stale entry (_conditional), and
            # nobody reads this body for the client: read it here and store it (nginx's
            # proxy_cache_convert_head does the same), then answer the HEAD.
            async def whole_then_head() -> Exchange:
                try:
                    whole = await _read_all(body, limit)
                finally:
                    exchange.release()
                exchange.body = b""
                if whole is None:
                    abandon()
                    return _mark(exchange, "MISS", rfc.unstored_status(
                        fwd, exchange.status, "too-large"))
                complete(whole)
                return _mark(exchange, "MISS", status)

            return whole_then_head()
        if isinstance(body, bytes):
            complete(body)
        else:
            exchange.body = _tee(body, limit, complete, abandon)
            release = exchange.release

            def release_and_finish() -> None:
                release()
                finish(False)  # the client left before the end: let the waiters go

            exchange.release = release_and_finish
        return _mark(exchange, "MISS", status)

    async def _partial(self, p: RoutePolicy, out: Outgoing, fetch: Fetch,
                       stale: Entry | None) -> Exchange:
        """A Range request with no usable stored response: forwarded as sent (Range and
        If-Range kept), its answer passed through and not stored. A 206 is no complete
        response (RFC 9111 §3.3); the request neither leads nor waits for a collapsed fetch
        (its answer is of no use to the others) and marks nothing hit-for-miss."""
        try:
            exchange = await fetch(out)
        except UpstreamError as exc:
            served = self._stale_on_error(p, stale, out, exc.status)
            if served is None:
                raise
            return served
        if exchange.status in rfc.ERROR_STATUSES and stale is not None:
            served = self._stale_on_error(p, stale, out, exchange.status)
            if served is not None:
                exchange.release()
                return served
        p.count("miss")
        return self._pass(p, exchange, "MISS", rfc.cache_status(
            hit=False, fwd="stale" if stale is not None else "miss",
            fwd_status=exchange.status, detail="range"))

    # ------------------------------------------------------------ stale answers
    def _stale_on_error(self, p: RoutePolicy, stale: Entry | None, out: Outgoing,
                        upstream_status: int) -> Exchange | None:
        now = time.time()
        if stale is None or not rfc.stale_if_error_allows(stale.fresh, stale.age(now)):
            return None
        p.count("stale")
        return self._from_entry(p, stale, out, stale.age(now), "STALE", rfc.cache_status(
            hit=False, fwd="stale", fwd_status=upstream_status, ttl=stale.ttl(now),
            detail="stale-if-error"))

    def _refresh_later(self, p: RoutePolicy, key: str, stale: Entry, out: Outgoing,
                       fetch: Fetch) -> None:
        """RFC 5861 §3: one background revalidation per key, however many stale answers."""
        svc = self.service
        if key in svc.refreshing or key in svc.flights:
            return
        svc.refreshing.add(key)
        background = Outgoing(method="GET", path_qs=out.path_qs, headers=CIMultiDict(out.headers),
                              body=None, upstream=out.upstream, client_url=out.client_url)

        async def refresh() -> None:
            try:
                exchange = await self._exchange(p, key, background, fetch, stale,
                                                lambda stored: None)
                if not isinstance(exchange.body, bytes):
                    async for _ in exchange.body:  # drive the tee so the copy is stored
                        pass
                exchange.release()
            except Exception as exc:  # noqa: BLE001 - a failed refresh leaves the stale entry
                log.debug("background refresh of %s failed: %s", key, exc)
            finally:
                svc.refreshing.discard(key)

        svc.spawn(refresh())

    # ------------------------------------------------------------ answers
    def repeat_hit(self, route: str, client_url: str, asked: Mapping[str, str],
                   sent: Mapping[str, str] | None = None,
                   peer_made: Container[str] = ()) -> Exchange | None:
        """The answer `serve` gives a plain GET of `client_url` when L1 holds it fresh with
        a body; None in every other case. A variant's Vary is compared with `sent`, what
        the upstream would have got for the request: None, or a Vary that names a field
        made from the peer (`peer_made`, lower case: the same bytes from another peer
        would be another variant), answers None. Not counted: the lane of repeated
        requests (gateway.hitlane), which writes what relay writes for such a hit, counts
        it with `count_hit` once it knows it answers it."""
        p = self.policies.get(route)
        if p is None:
            return None
        key = p.keys.get(client_url) or p.key(client_url)
        svc = self.service
        if key not in svc.memory.by_url:
            return None
        now = time.time()
        try:
            stored = svc.lookup_memory(key, _no_vary if sent is None else (
                lambda: _PeerFree(sent, peer_made)), now)
        except _Varies:
            return None
        if stored is None:
            return None
        age = stored.age(now)
        if not stored.body or rfc.evaluate(stored.fresh, age, asked) is not rfc.Use.FRESH:
            return None
        return _plain(p, stored, age, "HIT", rfc.hit_status(stored.fresh.lifetime - age))

    def count_hit(self, route: str) -> None:
        """A hit answered outside `serve` (repeat_hit's), counted as `serve` counts one."""
        self.policies[route].count("hit")

    def _from_entry(self, p: RoutePolicy, entry: Entry, out: Outgoing, age: float | None,
                    x_cache: str, status: str, plain: bool = False) -> Exchange:
        """The entry as the client gets it; `age` None: no Age field (a fresh store)."""
        if age is not None and (plain or not _any_field(out.asked, rfc.NOT_PLAIN)):
            return _plain(p, entry, age, x_cache, status)
        headers = rfc.client_headers(entry.headers.items(), p.cache, stored=True, age=age)
        # RFC 9110 §13.2.2: the client's validators first (a 304), then its range.
        if rfc.not_modified(out.asked, entry.headers):
            headers = CIMultiDict(rfc.not_modified_headers(headers.items()))
            exchange = Exchange(status=304, reason="Not Modified", headers=headers, body=b"")
        else:
            exchange = _part(entry, headers, rfc.requested_range(
                out.method, out.asked, entry.status, entry.headers, len(entry.body)))
        return _mark(exchange, x_cache, status)

    def _pass(self, p: RoutePolicy, exchange: Exchange, x_cache: str, status: str) -> Exchange:
        if x_cache == "BYPASS":
            p.count("bypass")
        headers = exchange.headers
        for name in p.pass_drop:  # else client_headers changes nothing
            if name in headers:
                exchange.headers = rfc.client_headers(headers.items(), p.cache, stored=False)
                break
        return _mark(exchange, x_cache, status)

    async def _unsafe(self, p: RoutePolicy | None, out: Outgoing, fetch: Fetch) -> Exchange:
        exchange = await fetch(out)
        urls = rfc.invalidated_urls(out.method, exchange.status, out.client_url,
                                    exchange.headers)
        if urls:
            await self.service.invalidate(list(dict.fromkeys(
                key for u in urls for key in self.service.keys_of(u))))
        if p is None:
            return exchange
        return self._pass(p, exchange, "BYPASS", rfc.cache_status(hit=False, fwd="bypass"))


class _Varies(Exception):
    """A stored variant asked for the request's fields: the lane does not answer."""


def _no_vary() -> CIMultiDict[str]:
    raise _Varies


class _PeerFree(Mapping[str, str]):
    """A request's fields as the Vary of a stored variant reads them (field_values calls
    `getall`), refusing those made from the peer."""

    __slots__ = ("_fields", "_peer_made")

    def __init__(self, fields: Mapping[str, str], peer_made: Container[str]) -> None:
        self._fields, self._peer_made = fields, peer_made

    def getall(self, name: str, default: Sequence[str]) -> Sequence[str]:
        if name.lower() in self._peer_made:
            raise _Varies
        return field_values(self._fields, name) or default

    def __getitem__(self, name: str) -> str:
        if name.lower() in self._peer_made:
            raise _Varies
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def _plain(p: RoutePolicy, entry: Entry, age: float, x_cache: str, status: str) -> Exchange:
    """The entry whole, as a request without validators or range gets it."""
    stored, varying = _hit_head(p, entry, age)
    return _mark(Exchange(status=entry.status, reason=entry.reason or None, headers=varying,
                          body=entry.body, stored=stored, origin=entry), x_cache, status)


def _hit_head(p: RoutePolicy, entry: Entry, age: float) -> tuple[StoredHead, CIMultiDict[str]]:
    """What rfc.client_headers + Content-Length give for a 200 from the entry, split in the
    part that does not change between hits (built once per entry and route drop set, and
    serialized once: proxy.relay writes it as it is) and the part that does (Age, and
    Cache-Control when the route sets browser_ttl)."""
    stored = entry.client.get(p.hit_drop)
    if stored is None:
        base = CIMultiDict(entry.headers)  # copied in C; then the few names to drop
        for name in p.hit_drop:
            base.popall(name, None)
        base["Content-Length"] = str(len(entry.body))  # in place, as the per-hit set did
        # What aiohttp's response would add on its own, added once here instead.
        if entry.body and "Content-Type" not in base:
            base["Content-Type"] = "application/octet-stream"
        base.setdefault("Server", SERVER_SOFTWARE)
        raw = None  # without a Date, aiohttp adds the time of each answer
        # A control character (ValueError): leave it to aiohttp to refuse, as before.
        if "Date" in base:
            with contextlib.suppress(ValueError):
                raw = field_lines(base)
        stored = entry.client[p.hit_drop] = StoredHead(base, raw)
    varying: CIMultiDict[str] = CIMultiDict(Age=str(int(age)))
    if p.cache.browser_ttl is not None:  # rfc.client_headers' rewrite
        varying["Cache-Control"] = f"max-age={int(p.cache.browser_ttl + age)}"
    return stored, varying


def _part(entry: Entry, headers: CIMultiDict[str],
          asked: rfc.ByteRange | rfc.NotSatisfiable | None) -> Exchange:
    """The stored response whole, the range asked of it (206) or a 416 (RFC 9110 §14.2,
    §15.3.7, §15.5.17). `headers` are the stored ones as the client gets them."""
    if asked is None:
        headers["Content-Length"] = str(len(entry.body))
        return Exchange(status=entry.status, reason=entry.reason or None, headers=headers,
                        body=entry.body)
    if isinstance(asked, rfc.NotSatisfiable):
        # Nothing of the representation: none of its content or freshness fields, so no
        # cache after us keeps this 416 for the URL.
        refusal: CIMultiDict[str] = CIMultiDict({"Content-Range": asked.content_range,
                                                 "Content-Length": "0"})
        return Exchange(status=416, reason="Range Not Satisfiable", headers=refusal, body=b"")
    headers["Content-Range"] = asked.content_range
    headers["Content-Length"] = str(asked.last - asked.first + 1)
    return Exchange(status=206, reason="Partial Content", headers=headers,
                    body=entry.body[asked.first:asked.last + 1])


# The client's validators and range: answered from an entry, never sent upstream.
_TAKEN_OUT = (*rfc.CLIENT_CONDITIONALS, *rfc.RANGE_FIELDS)
# What makes a GET or HEAD more than a plain one: those, and preconditions that bypass the
# cache.
_ASKS_MORE = (*rfc.BYPASS_REQUEST_FIELDS, *_TAKEN_OUT)


def _no_waiters(stored: bool) -> None:
    """The `finish` of a fetch that leads no collapsed waiters."""


def _any_field(headers: Mapping[str, str], names: tuple[str, ...]) -> bool:
    """Whether the request has any of `names` (BYPASS_REQUEST_FIELDS, CLIENT_CONDITIONALS)."""
    for name in names:  # noqa: SIM110 - no generator per request
        if name in headers:
            return True
    return False


_X_CACHE = istr("X-Cache")  # istr: set without folding the name's case again
_CACHE_STATUS = istr("Cache-Status")


def _mark(exchange: Exchange, x_cache: str, status: str) -> Exchange:
    exchange.headers[_X_CACHE] = x_cache
    exchange.headers[_CACHE_STATUS] = status
    exchange.cache_status = x_cache
    return exchange


def _conditional(out: Outgoing, stale: Entry | None) -> Outgoing:
    """The request upstream: the client's own validators and range removed (we want a
    full, storable answer), the stored entry's added (§4.3.1)."""
    if stale is None and not _any_field(out.asked, _TAKEN_OUT):
        return out
    headers = CIMultiDict(out.headers)
    for name in _TAKEN_OUT:
        headers.popall(name, None)
    if stale is not None:
        for validator, value in rfc.conditional_headers(stale.headers):
            headers[validator] = value
    return Outgoing(method="GET" if out.method == "HEAD" else out.method, path_qs=out.path_qs,
                    headers=headers, body=out.body, upstream=out.upstream,
                    client_url=out.client_url, asked=out.asked, interim=out.interim)


def _freshened(stale: Entry, exchange: Exchange, route: RouteCache, request_time: float,
               response_time: float) -> Entry:
    """§4.3.4: a 304 updates the stored headers and restarts the clock; the body stays."""
    headers = rfc.freshen(stale.headers.items(), exchange.headers, route.store_set_cookie)
    header_map = CIMultiDict(headers)
    return stale.refreshed(headers, rfc.initial_age(exchange.headers, request_time,
                                                    response_time),
                           response_time, rfc.freshness(stale.status, header_map, route,
                                                        response_time))


async def _read_all(body: AsyncIterator[bytes], limit: int) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def _tee(body: AsyncIterator[bytes], limit: int, complete: Callable[[bytes], None],
               abandon: Callable[[], None]) -> AsyncIterator[bytes]:
    """Stream to the client while keeping a copy up to `limit`; past it, drop the copy."""
    parts: list[bytes] | None = []
    size = 0
    done = False
    try:
        async for chunk in body:
            if parts is not None:
                size += len(chunk)
                if size > limit:
                    parts = None
                    abandon()
                else:
                    parts.append(chunk)
            yield chunk
        if parts is not None:
            complete(b"".join(parts))
        done = True
    finally:
        if not done and parts is not None:
            abandon()
