"""Talking to upstreams: one keep-alive pool per upstream, bodies streamed both ways.

`UpstreamPool.send` turns an `Outgoing` request into an `Exchange` (status, headers and a body
iterator) without writing anything to the client, so the cache can sit between the two and
the pipeline stays the only place that answers. `relay` then writes an exchange out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import aiohttp
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from gateway.config.model import Upstream
from gateway.wire.aiohttp_io import OneWrite, Prebuilt, response_head, serialize_head
from gateway.wire.h1client import (
    EMPTY_PAYLOAD,
    WHOLE_AT_MOST,
    BodyTooLarge,
    H1Pool,
    Interim,
    RawResponseMessage,
    Response,
    StreamedBody,
    UpstreamError,
    with_fields,
)

# At most this many bytes, already received, are relayed as bytes: what the upstream
# client hands out as bytes when they come whole with the head.
SMALL_BODY = WHOLE_AT_MOST

Closable = H1Pool | aiohttp.ClientSession  # what a reload retires, closed once unused

# RFC 9110 §7.6.1 hop-by-hop fields, plus the proxy credentials that belong to this hop.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})


_HANDSHAKE_FIELDS = frozenset({"upgrade", "connection"})  # kept for a WebSocket handshake
_KEEP_UPGRADE_DROP = HOP_BY_HOP - _HANDSHAKE_FIELDS


def end_to_end(headers: Mapping[str, str] | CIMultiDictProxy[str],
               keep_upgrade: bool = False) -> CIMultiDict[str]:
    """A copy without hop-by-hop fields, including every field that Connection names.

    Copy first, then remove the few names to drop: the copy is one C call, where testing
    every field in Python cost more per request (tests/perf/bench_proxy.py).
    """
    result: CIMultiDict[str] = CIMultiDict(headers)
    drop = _KEEP_UPGRADE_DROP if keep_upgrade else HOP_BY_HOP
    connection = result.get("Connection")
    # The usual lone "keep-alive" names no field that is not dropped anyway.
    if connection is not None and (connection.lower() != "keep-alive"
                                   or len(result.getall("Connection")) > 1):
        named = {
            token.strip().lower()
            for value in result.getall("Connection")
            for token in value.split(",") if token.strip()
        }
        drop = drop | (named - _HANDSHAKE_FIELDS if keep_upgrade else named)
    for name in drop:
        if name in result:
            result.popall(name)
    return result


def field_lines(fields: CIMultiDict[str]) -> bytes:
    """`fields` serialized as aiohttp writes them ("name: value\r\n" each), nothing else:
    no start line, no empty line after. ValueError if a field holds a control character."""
    # The serializer writes "<line>\r\n" + the fields + "\r\n": drop the ends.
    return serialize_head("", fields)[2:-2]


class AddedFields:
    """Fields a stage adds to every request it decides the same way (the flag headers).

    Serialized once when made, so a request that carries them sends ready bytes instead of
    adding the same few fields to its header section and serializing them again (five flag
    fields: ~0.15 us per request instead of ~0.6). `raw` is None when a value holds a
    control character: such fields then go through the header section, whose serializer
    refuses the request (400), as it would if they had been added there.
    """

    __slots__ = ("pairs", "raw")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = tuple((istr(name), value) for name, value in pairs)
        try:
            self.raw: bytes | None = field_lines(CIMultiDict(self.pairs))
        except ValueError:
            self.raw = None


class InterimSink(Protocol):
    """Where interim answers go: the client connection, before the final response."""

    async def write(self, chunk: bytes) -> None: ...


class InterimClient(Protocol):
    """The client an exchange's interim answers are for (the server's request): its HTTP
    version says whether it may get them, its writer takes them."""

    @property
    def version(self) -> tuple[int, int]: ...

    @property
    def writer(self) -> InterimSink: ...


class Outgoing:
    """The request as it will leave for the upstream.

    `headers`, what the upstream gets, may be given as a function that builds them on first
    use: a cache hit answers without ever needing them (building them was about a sixth of
    a hit's CPU, tests/perf/bench_cache.py). `asked` is the client's own header section,
    read for what the client asks of this hop (Cache-Control, Pragma, conditionals, Range:
    fields the header policy does not rewrite); it defaults to `headers`.

    `added` (the flag headers) belong to `headers` for whoever reads them; only the wire
    (`wire`) may take them in their serialized form, when nobody has read `headers` before.

    `interim`: the client the upstream's interim answers (103 Early Hints...) are written
    to, ahead of the final one (RFC 9110 §15.2), when it speaks HTTP/1.1 (an HTTP/1.0
    client must not get them; asked only when an upstream is reached, so a hit pays
    nothing for it); None drops them: a background request has nobody to tell. They never
    reach the cache.
    """

    __slots__ = ("_added", "_build", "_headers", "asked", "body", "client_url", "interim",
                 "method", "path_qs", "upstream")

    def __init__(self, method: str, path_qs: str,
                 headers: CIMultiDict[str] | Callable[[], CIMultiDict[str]],
                 body: StreamedBody | bytes | None, upstream: str, client_url: str = "",
                 asked: Mapping[str, str] | None = None,
                 added: AddedFields | None = None,
                 interim: InterimClient | None = None) -> None:
        self.method = method
        self.interim = interim
        self._added = added
        self.path_qs = path_qs  # raw path and query, after strip_prefix
        self.body = body
        self.upstream = upstream
        # The URL the client asked for (scheme://host/path?query): what the cache keys on.
        self.client_url = client_url
        if isinstance(headers, CIMultiDict):
            self._headers: CIMultiDict[str] | None = headers
            self._build: Callable[[], CIMultiDict[str]] | None = None
            self.asked: Mapping[str, str] = headers if asked is None else asked
        else:
            self._headers, self._build = None, headers
            if asked is None:
                raise TypeError("lazily built headers need the client's own as `asked`")
            self.asked = asked

    def _built(self) -> CIMultiDict[str]:
        headers = self._headers
        if headers is None:
            assert self._build is not None
            headers = self._headers = self._build()
            self._build = None
        return headers

    @property
    def headers(self) -> CIMultiDict[str]:
        headers = self._headers  # read by the cache after the exchange: no second frame
        if headers is None:
            headers = self._built()
        if self._added is not None:
            headers.extend(self._added.pairs)
            self._added = None
        return headers

    @property
    def built(self) -> CIMultiDict[str] | None:
        """`headers` if somebody asked for them (the cache, to compare a Vary), else None."""
        return self._headers

    def wire(self) -> tuple[CIMultiDict[str], bytes]:
        """The header section to send, and serialized fields to send after it."""
        added = self._added
        if added is None or added.raw is None:
            return self.headers, b""
        return self._built(), added.raw

    def sent_headers(self) -> CIMultiDict[str]:
        """`headers`, as a function (what the cache's Vary matching calls, if it must)."""
        return self.headers


@dataclass(frozen=True, slots=True)
class StoredHead:
    """The part of a stored response's head that every hit repeats, kept with the entry.

    `fields` as a CIMultiDict, and `raw`, the same fields serialized (each line CRLF-ended)
    when they can be sent as they are; None when aiohttp must still add something (Date).
    """

    fields: CIMultiDict[str]
    raw: bytes | None


@dataclass(slots=True)
class Exchange:
    """An upstream response (or a stored one) ready to be relayed to the client."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: AsyncIterator[bytes] | bytes
    release: Callable[[], None] = lambda: None
    # Set by stages to say what they did, for headers, logs and metrics.
    cache_status: str | None = None
    # A stored response: the head's constant part, sent before `headers` (then only the
    # fields that change from hit to hit).
    stored: StoredHead | None = None
    # The stored response (gateway.cache.entry.Entry) this answer was made from, if any:
    # later stages keep what they derive from it with it (gateway.compression.stage).
    origin: object = None


Fetch = Callable[[Outgoing], Awaitable[Exchange]]


class LimitedBody(StreamedBody):
    """The request body as it arrives, stopping once it passes `limit` bytes.

    The overrun raises BodyTooLarge while the body is being sent; the upstream client
    hands that cause to whoever waits for the response (gateway/wire/h1client.py), so the
    pipeline answers 413.
    """

    def __init__(self, stream: aiohttp.StreamReader, limit: int | None) -> None:
        self.stream = stream
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.stream.iter_any():
            seen += len(chunk)
            if self.limit is not None and seen > self.limit:
                raise BodyTooLarge(self.limit)
            yield chunk


class UpstreamPool:
    """The upstreams by name: a lean HTTP/1.1 pool each (gateway/wire/h1client.py), and, made
    on first use, an aiohttp session for WebSocket upgrades."""

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = dict(upstreams)
        self.pools = {name: H1Pool(up) for name, up in self.upstreams.items()}
        self._ws_sessions: dict[str, aiohttp.ClientSession] = {}

    def websocket_session(self, upstream: str) -> aiohttp.ClientSession:
        session = self._ws_sessions.get(upstream)
        if session is None:
            up = self.upstreams[upstream]
            session = self._ws_sessions[upstream] = aiohttp.ClientSession(
                # One user's cookies must never reach another user's request.
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=up.timeout,
                                              sock_connect=up.connect_timeout))
        return session

    def adopt(self, upstreams: Mapping[str, Upstream]) -> list[Closable]:
        """Take a reloaded upstream set; unchanged upstreams keep their warm pools.

        Returns the pools and sessions that are no longer used, for the caller to close
        once the requests still using them are done.
        """
        retired: list[Closable] = []
        pools: dict[str, H1Pool] = {}
        for name, up in upstreams.items():
            if self.upstreams.get(name) == up and name in self.pools:
                pools[name] = self.pools.pop(name)
            else:
                pools[name] = H1Pool(up)
                if name in self._ws_sessions:
                    retired.append(self._ws_sessions.pop(name))
        retired.extend(self.pools.values())
        retired.extend(s for n, s in self._ws_sessions.items() if n not in upstreams)
        self._ws_sessions = {n: s for n, s in self._ws_sessions.items() if n in upstreams}
        self.pools, self.upstreams = pools, dict(upstreams)
        return retired

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pools.values()),
                             *(s.close() for s in self._ws_sessions.values()))

    def url(self, upstream: str, path_qs: str) -> URL:
        return URL(self.upstreams[upstream].url.rstrip("/") + path_qs, encoded=True)

    async def send(self, out: Outgoing) -> Exchange:
        """The upstream's answer; its body as bytes when it came whole with the head."""
        pool = self.pools[out.upstream]
        headers, added = out.wire()
        client = out.interim
        relaying = (_relaying_to(client.writer)
                    if client is not None and client.version >= HttpVersion11 else None)
        response = await pool.request(out.method, out.path_qs, headers, out.body, added,
                                      relaying)
        message, content = response.message, response.body
        if isinstance(content, bytes):
            body: AsyncIterator[bytes] | bytes = content  # whole, in the read with its head
        elif content is EMPTY_PAYLOAD:
            body = b""
        elif content.is_eof() and content.exception() is None and \
                content.total_bytes <= SMALL_BODY:
            # The whole (small) body came with the head though not as bytes (chunked, say):
            # hand it over as bytes too, so relay writes head and body at once without a
            # per-chunk iterator. It is already in memory; anything larger or still
            # arriving streams.
            body = content.read_nowait()
        else:
            body = _iterate(response, content, out.upstream)
        if isinstance(body, bytes):
            response.release()
        return Exchange(
            status=message.code,
            reason=message.reason,
            headers=end_to_end(message.headers),
            body=body,
            release=response.release,
        )


def _relaying_to(sink: InterimSink) -> Interim:
    async def relay_interim(message: RawResponseMessage) -> None:
        head = interim_head(message.code, message.reason, end_to_end(message.headers))
        if head is None:
            return
        # A client gone away: the final answer finds that out too.
        with contextlib.suppress(ConnectionResetError):
            await sink.write(head)

    return relay_interim


def interim_head(status: int, reason: str | None, headers: CIMultiDict[str]) -> bytes | None:
    """An interim response as the client gets it (hop-by-hop fields already removed); None
    when a field holds a control character (then it is not relayed: 1xx are advisory)."""
    if not reason or not reason.isprintable() or not reason.isascii():
        reason = _REASONS.get(status, "")
    try:
        fields = field_lines(headers)
    except ValueError:
        return None
    return b"".join((f"HTTP/1.1 {status} {reason}\r\n".encode("ascii"), fields, b"\r\n"))


async def _iterate(response: Response, stream: aiohttp.StreamReader, upstream: str
                   ) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream.iter_any():
            yield chunk
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if response.timed_out:
            raise UpstreamError(504, f"upstream {upstream!r} timed out sending the body"
                                ) from None
        raise UpstreamError(502, f"upstream {upstream!r} broke off the body: {exc}") from exc
    finally:
        response.release()


BODILESS_STATUSES = frozenset({204, 304})
_REASONS = {status.value: status.phrase for status in HTTPStatus}


_GET_HEAD = ("GET", "HEAD")


async def _write_whole(request: web.BaseRequest, prebuilt: Prebuilt, exchange: Exchange
                       ) -> Prebuilt:
    assert isinstance(exchange.body, bytes)
    try:
        await prebuilt.prepare(request)
        # A HEAD gets the head a GET gets (RFC 9110 §9.3.2), Content-Length included.
        await prebuilt.write_eof(exchange.body if request.method != "HEAD" else b"")
    except ConnectionResetError:
        pass  # the client went away; nobody is left to answer
    finally:
        exchange.release()
    return prebuilt


def stored_head(exchange: Exchange, raw: bytes, extra: Iterable[tuple[str, str]]) -> bytes:
    """The head of a stored answer whose fixed fields are serialized already (`raw`): the
    status line and the fields that vary from hit to hit (Age, Cache-Status, X-Cache, the
    request id, rate-limit fields) in one C call, then the stored part. Distinct names:
    their relative order means nothing (RFC 9110 §5.3)."""
    reason = exchange.reason or _REASONS.get(exchange.status, "")
    varying = exchange.headers
    varying.extend(extra)
    return with_fields(serialize_head(f"HTTP/1.1 {exchange.status} {reason}", varying), raw)


async def relay(request: web.BaseRequest, exchange: Exchange,
                extra: Iterable[tuple[str, str]] = (),
                whole: Callable[[], None] | None = None) -> web.StreamResponse:
    """Write an exchange to the client, streaming the body; returns the prepared response.

    `whole` is called, before anything is written, when the answer leaves whole from its
    stored serialized head (an HTTP/1.1 keep-alive GET or HEAD answered with a stored
    body, in one write): what the lane of repeated requests may repeat."""
    stored = exchange.stored
    if stored is not None:
        body = exchange.body
        if stored.raw is not None and isinstance(body, bytes) and body and \
                request.version == HttpVersion11 and request.keep_alive and \
                request.method in _GET_HEAD and exchange.status not in BODILESS_STATUSES:
            if whole is not None:
                whole()
            head = stored_head(exchange, stored.raw, extra)
            return await _write_whole(request, Prebuilt(exchange.status, exchange.reason, head,
                                                        len(body)), exchange)
        headers = stored.fields.copy()
        headers.extend(exchange.headers)
        exchange.headers, exchange.stored = headers, None
    elif isinstance(exchange.body, bytes) and exchange.body and \
            request.version == HttpVersion11 and request.keep_alive and \
            request.method == "GET" and exchange.status >= 200 and \
            exchange.status not in BODILESS_STATUSES and \
            exchange.headers.get("Content-Length") == str(len(exchange.body)):
        # The usual small answer: its head made in one C call (response_head), then head
        # and body in one write, as a cache hit's.
        fields = exchange.headers
        for name, value in extra:
            fields[name] = value
        reason = exchange.reason if exchange.reason is not None else \
            _REASONS.get(exchange.status, "")
        try:
            head = response_head(exchange.status, reason, fields)
        except ValueError:
            pass  # a control character: aiohttp's own path below refuses it as it always has
        else:
            return await _write_whole(request, Prebuilt(exchange.status, reason, head,
                                                        len(exchange.body)), exchange)
    kind = OneWrite if isinstance(exchange.body, bytes) else web.StreamResponse
    response = kind(status=exchange.status, reason=exchange.reason,
                    headers=exchange.headers)  # copied in C, duplicates kept
    headers = response.headers
    for name, value in extra:
        headers[name] = value
    bodiless = exchange.status in BODILESS_STATUSES or 100 <= exchange.status < 200
    if exchange.status == 204:  # RFC 9110 §8.6: a 204 carries no Content-Length
        headers.pop("Content-Length", None)
    length = headers.get("Content-Length")
    if length is not None and length.isdigit():
        response.content_length = int(length)
    elif "Content-Length" in headers:
        del headers["Content-Length"]
    try:
        await response.prepare(request)
        if isinstance(exchange.body, bytes):
            # Head and body leave in one write (see OneWrite).
            await response.write_eof(exchange.body if not bodiless and
                                     request.method != "HEAD" else b"")
            return response
        if not bodiless and request.method != "HEAD":
            async for chunk in exchange.body:
                await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-response. Nobody is left to answer; releasing the
        # half-read upstream response below closes that connection too.
        pass
    finally:
        exchange.release()
    return response
