"""Talking to upstreams: one long-lived client session per upstream, bodies streamed both ways.

`UpstreamPool.send` turns an `Outgoing` request into an `Exchange` (status, headers and a body
iterator) without writing anything to the client, so the cache can sit between the two and
the pipeline stays the only place that answers. `relay` then writes an exchange out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config.model import Upstream

CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024  # at most this many bytes, already received, are relayed as bytes

# RFC 9110 §7.6.1 hop-by-hop fields, plus the proxy credentials that belong to this hop.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})


_HANDSHAKE_FIELDS = frozenset({"upgrade", "connection"})  # kept for a WebSocket handshake
_KEEP_UPGRADE_DROP = HOP_BY_HOP - _HANDSHAKE_FIELDS


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange: 502, or 504 for timeouts."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


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


@dataclass(slots=True)
class Outgoing:
    """The request as it will leave for the upstream."""

    method: str
    path_qs: str  # raw path and query, after strip_prefix
    headers: CIMultiDict[str]
    body: LimitedBody | bytes | None
    upstream: str
    # The URL the client asked for (scheme://host/path?query): what the cache keys on.
    client_url: str = ""
    extra_response_headers: list[tuple[str, str]] = field(default_factory=list)


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


Fetch = Callable[[Outgoing], Awaitable[Exchange]]


class LimitedBody:
    """The request body as it arrives, stopping once it passes `limit` bytes.

    The client library reports a failing body generator as a broken connection, so the
    overrun is also remembered here for `UpstreamPool.send` to turn into a 413.
    """

    def __init__(self, stream: aiohttp.StreamReader, limit: int | None) -> None:
        self.stream = stream
        self.limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.stream.iter_any():
            seen += len(chunk)
            if self.limit is not None and seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge(self.limit)
            yield chunk


# Fields the client library would add on its own; the upstream must get what the client sent.
_NOT_ADDED = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


class _AsSent(aiohttp.ClientRequest):
    """A client request that adds no default fields.

    Passing skip_auto_headers makes aiohttp build a sorted CIMultiDict of the names and a
    copy of the request headers on every request just to learn that nothing is to be added
    (tests/perf/bench_proxy.py). Here the skip set is built once; it is still consulted
    where aiohttp would add a Content-Type for a streamed body.
    """

    _SKIP: CIMultiDict[None] = CIMultiDict((name, None) for name in _NOT_ADDED)

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = self._SKIP

    def update_headers(self, headers: Any) -> None:
        """Adopt the session's header set instead of copying it field by field.

        ClientSession._prepare_headers has just built this CIMultiDict for this request
        alone, so nothing else holds it. aiohttp's own update_headers copies it in Python
        into a new one that starts with Host (the client's, if it sent one); when the
        client's single Host already comes first the copy would be identical, so it is
        skipped. Anything else (no Host, several, not first) takes aiohttp's path.
        """
        if type(headers) is CIMultiDict and next(iter(headers), None) in hdrs.HOST_ALL \
                and len(headers.getall(hdrs.HOST)) == 1:
            self.headers = headers
        else:
            super().update_headers(headers)


class UpstreamPool:
    """One ClientSession per upstream: keep-alive pool, no cookie jar, no decompression."""

    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = dict(upstreams)
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        for name, up in self.upstreams.items():
            self.sessions[name] = self._session(up)

    @staticmethod
    def _session(up: Upstream) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=up.max_connections, limit_per_host=0, ttl_dns_cache=300,
            enable_cleanup_closed=False,
        )
        return aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            # One user's cookies must never reach another user's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=up.timeout, sock_connect=up.connect_timeout),
            # Send what the client sent, nothing the client library would add on its own.
            request_class=_AsSent,
            raise_for_status=False,
        )

    def adopt(self, upstreams: Mapping[str, Upstream]) -> list[aiohttp.ClientSession]:
        """Take a reloaded upstream set; unchanged upstreams keep their warm pools.

        Returns the sessions that are no longer used, for the caller to close once the
        requests still using them are done.
        """
        retired: list[aiohttp.ClientSession] = []
        sessions: dict[str, aiohttp.ClientSession] = {}
        for name, up in upstreams.items():
            if self.upstreams.get(name) == up and name in self.sessions:
                sessions[name] = self.sessions.pop(name)
            else:
                sessions[name] = self._session(up)
        retired.extend(self.sessions.values())
        self.sessions, self.upstreams = sessions, dict(upstreams)
        return retired

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions.values()))

    def url(self, upstream: str, path_qs: str) -> URL:
        return URL(self.upstreams[upstream].url + path_qs, encoded=True)

    async def send(self, out: Outgoing, whole_small: bool = True) -> Exchange:
        """The upstream's answer; its body as bytes when it came whole with the head.

        `whole_small=False` always gives an iterator (the cache stage applies its size and
        conditional-request rules to streamed bodies).
        """
        session = self.sessions[out.upstream]
        try:
            response = await session.request(
                out.method, self.url(out.upstream, out.path_qs), headers=out.headers,
                data=out.body, allow_redirects=False, compress=None,
            )
        except BodyTooLarge:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if isinstance(out.body, LimitedBody) and out.body.exceeded:
                raise BodyTooLarge(out.body.limit or 0) from exc
            raise _upstream_error(out.upstream, exc) from exc
        content = response.content
        length = response.content_length
        if whole_small and length is not None and length <= SMALL_BODY and \
                content.is_eof() and content.exception() is None:
            # The whole (small) body came with the head: hand it over as bytes, so relay
            # writes head and body at once without a per-chunk iterator. It is already in
            # memory; anything larger or still arriving streams as before.
            body: AsyncIterator[bytes] | bytes = content.read_nowait()
            response.release()
        else:
            body = _iterate(response, out.upstream)
        return Exchange(
            status=response.status,
            reason=response.reason,
            headers=end_to_end(response.headers),
            body=body,
            release=response.release,
        )


def _upstream_error(upstream: str, exc: BaseException) -> UpstreamError:
    """502 for a refused or broken exchange, 504 when the upstream ran out of time."""
    if isinstance(exc, asyncio.TimeoutError):  # also aiohttp's ServerTimeoutError
        return UpstreamError(504, f"upstream {upstream!r} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, f"upstream {upstream!r} is unreachable: "
                             f"{exc.os_error.strerror or exc.os_error}")
    return UpstreamError(502, f"upstream {upstream!r} broke the exchange: "
                         f"{type(exc).__name__}: {exc}")


async def _iterate(response: aiohttp.ClientResponse, upstream: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TimeoutError:
        raise UpstreamError(504, f"upstream {upstream!r} timed out sending the body") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(502, f"upstream {upstream!r} broke off the body: {exc}") from exc
    finally:
        response.release()


BODILESS_STATUSES = frozenset({204, 304})


class _OneWrite(web.StreamResponse):
    """A response whose whole body is at hand: head and body leave in one write.

    StreamResponse sends the head as soon as it is prepared, so the body costs a second
    send (and a second TCP segment); aiohttp's own `web.Response` holds the head back until
    the body is written, through this class attribute. Streamed bodies keep the immediate
    head, so a slow upstream body never delays the status line.
    """

    _send_headers_immediately = False


async def relay(request: web.BaseRequest, exchange: Exchange,
                extra: Iterable[tuple[str, str]] = ()) -> web.StreamResponse:
    """Write an exchange to the client, streaming the body; returns the prepared response."""
    kind = _OneWrite if isinstance(exchange.body, bytes) else web.StreamResponse
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
            # Head and body leave in one write (see _OneWrite).
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
