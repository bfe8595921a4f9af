"""Repeated requests for a fresh cached answer, answered from the connection's protocol.

A client that asks for a cached URL again mostly sends the very same bytes again: the same
request line and fields (a poller, an API client, a CDN's edge, a load balancer's check).
When the pipeline answers such a request with a fresh L1 hit written whole for the second
time (most requests never repeat: the first time only its bytes are noted, as nginx's
proxy_cache_min_uses 2 would), it remembers the bytes with what it learnt from them: the
route, the cache URL, the fields the freshness check reads, the client's own request id
if it sent one, the log's fields. When the same bytes come again, alone in one read on a
connection whose protocol waits for a request (gateway.wire.server.GuardedHandler), the
protocol hands them here before aiohttp parses them, and the answer is made from the
cache entry: no parse, no request object, no task, no pass through the stages. The hit
itself is the cache stage's own (its lookup, freshness, Age, Cache-Status and counting:
ResponseCache.repeat_hit) and the rest is what Pipeline.handle does for it: a request id,
the request metrics, the access log line.

What the answer depends on, and why a remembered one stays right:
- the bytes: only the same bytes are answered, so everything the pipeline derived from
  them (the normalised target, the route, the refusals of gateway.hygiene, the key) holds;
- the configuration: a reload forgets everything (GatewayProcess._swap), and a request
  remembered under another runtime than the one serving is dropped when met;
- the cache: looked up anew every time, so a purge, an expiry or a new variant sends the
  request down the usual path. A variant's Vary is compared with what the upstream would
  have got for the first of these bytes (the fields the pipeline built then), which a
  repeat's would equal but for the fields made from the peer (X-Forwarded-For, identity
  fields kept only from a trusted proxy, the request id...): a Vary naming one of those
  sends the request down the usual path;
- the coding: on a route that compresses, the answer is the one the compression stage
  worked out for an earlier request of the same kind (the entry's head, Accept-Encoding,
  a secret), reused as the stage reuses it (Compressor.known); when it has none yet, the
  request goes down the usual path, which works it out;
- the peer: the access log's client address is worked out again for each request. Routes
  whose answer depends on more (rate limits, flags, an experiment metric counted on the
  route) are never remembered, nor are methods but GET and HEAD (answered with a GET's
  head alone, as relay answers it), bodies, upgrades, Expect, HTTP/1.0 or
  Connection: close;
- the connection: only a whole head alone in one read, while aiohttp waits for a request
  with nothing queued, closing or left unwritten (else the usual path, which waits for the
  client to read), on a connection that never sent anything else (else its parser may
  hold part of a request).

Bounded: at most MEMO requests of at most MAX_BYTES each (and as many noted once), emptied
whole when full as the pipeline's other memos: a client sending ever new requests makes it
forget, nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.accesslog import AccessRecord
from gateway.compression import CONTENT_ENCODING
from gateway.context import client_address, remember
from gateway.metrictally import TALLY
from gateway.proxy import stored_head

if TYPE_CHECKING:
    from gateway.pipeline import Pipeline, Runtime

MEMO = 1024
MAX_BYTES = 4096  # a request head longer than this is parsed every time


@dataclass(slots=True)
class Seen:
    """What the pipeline learnt from one request's bytes that a repeat of them needs.
    (Not frozen: a frozen dataclass sets each field through object.__setattr__, ~1k
    instructions per field, and nothing assigns to a Seen once made.)"""

    runtime: Runtime
    method: str  # GET, or HEAD: the head alone
    scheme: str  # the connection's: part of the cache key
    route: str
    client_url: str  # what the cache keys on
    asked: CIMultiDictProxy[str]  # the request's fields as the stages read them
    # What the upstream would have got, if the cache built it to compare a Vary with.
    sent: CIMultiDict[str] | None
    accept: str | None  # its Accept-Encoding, read on every repeat if the route compresses
    request_id: str | None  # the client's own, when it sent a usable one
    path: str  # the normalised target's path, for the log
    upstream: str | None
    ratelimit: str | None


class HitLane:
    """The lane of one gateway process (its proxy listener's GuardedHandlers call it)."""

    max_bytes = MAX_BYTES

    def __init__(self, pipeline: Pipeline, new_request_id: Callable[[], str]) -> None:
        self.pipeline = pipeline
        self.new_request_id = new_request_id  # the pipeline's own
        self.seen: dict[bytes, Seen] = {}
        self.once: dict[bytes, None] = {}  # answered once: remembered if they come again

    def again(self, data: bytes) -> bool:
        """Whether these bytes were answered (with a hit the lane could repeat) before: a
        request is remembered the second time it comes, as nginx's proxy_cache_min_uses 2,
        so a stream of requests that never repeat costs one dict look and store each."""
        once = self.once
        if data in once:
            return True
        if len(once) >= MEMO:  # context.remember's bound, without its call
            once.clear()
        once[data] = None
        return False

    def remember(self, data: bytes, seen: Seen) -> None:
        if len(data) <= MAX_BYTES:
            remember(self.seen, data, seen, MEMO)

    def forget(self) -> None:
        """Everything remembered: a reload's new runtime starts afresh (and the old one is
        not kept alive by what was remembered under it)."""
        self.seen.clear()
        self.once.clear()

    def answer(self, data: bytes, peer: str, scheme: str, write: Callable[[bytes], None]
               ) -> bool:
        seen = self.seen.get(data)
        if seen is None:
            return False
        pipeline = self.pipeline
        rt = seen.runtime
        if rt is not pipeline.runtime:  # configuration reloaded since
            del self.seen[data]
            return False
        if scheme != seen.scheme:
            return False
        started = time.perf_counter()
        exchange = rt.cache.repeat_hit(seen.route, seen.client_url, seen.asked, seen.sent,
                                       rt.peer_made)
        if exchange is None:
            return False
        encoding = None
        compressor = rt.compressor
        stored = exchange.stored
        # On a route that compresses, an entry not coded upstream goes out as it is to the
        # usual client, which sends no Accept-Encoding (Compressor.shape's first test);
        # else the compression stage's answer, if it has worked one out.
        if compressor is not None and seen.route in compressor.routes and stored is not None \
                and (seen.accept is not None
                     or stored.fields.get(CONTENT_ENCODING) is not None):
            if seen.method != "GET":  # a HEAD's is the stage's own (no bytes coded, counted)
                return False
            shaped = compressor.known(seen.route, seen.accept, seen.asked, exchange)
            if shaped is None:  # coding work left: the pipeline's
                return False
            exchange, encoding = shaped
        stored, body = exchange.stored, exchange.body
        if stored is None or stored.raw is None or not isinstance(body, bytes):
            return False  # a head aiohttp must still complete (no Date)
        rt.cache.count_hit(seen.route)
        request_id = seen.request_id or self.new_request_id()
        head = stored_head(exchange, stored.raw, (("X-Request-Id", request_id),))
        method = seen.method
        sent = head + body if method == "GET" else head  # a HEAD: a GET's head (relay's)
        write(sent)
        exchange.release()
        duration = time.perf_counter() - started
        TALLY.started()  # in flight for no time at all: nothing was awaited
        TALLY.finished(seen.route, method, str(exchange.status), duration)
        log = pipeline.access_log
        if log is not None:
            record = AccessRecord(request_id, method, seen.path,
                                  client_address(rt.config.context, peer, seen.asked)[0])
            record.route = seen.route
            record.upstream = seen.upstream
            record.ratelimit = seen.ratelimit
            record.cache = exchange.cache_status
            record.encoding = encoding
            record.status = exchange.status
            record.bytes = len(sent)  # as aiohttp's writer counts (head and body)
            record.duration = duration
            log.write(record)
        return True


__all__ = ["MAX_BYTES", "MEMO", "HitLane", "Seen"]
