"""A lean HTTP/1.1 client for the proxy path: one keep-alive pool per upstream.

aiohttp's ClientSession was about half of the proxy path's CPU per request (the brief's
measurements; tests/perf/bench_proxy.py): per request it builds a URL object, a ClientRequest
that makes a dozen passes over the headers, a timer context, trace hooks, cookie handling and
a ClientResponse. A proxy that forwards what it was sent needs none of that. This client keeps
aiohttp's C llhttp parser and its body StreamReader, driven by a connection protocol of its
own (gateway/wire/framing.py: one parser per connection, read flow control, payload errors
when a connection drops mid-body, bytes past a response's end), and a pool of idle
connections, a request head serialized once in C, one write, and one deadline for the whole
exchange (`timeout`: past it the client gets 504).

A connection is reused only when its response was read to the end, nothing unasked-for
arrived and neither side said `Connection: close`. A request that finds its reused
connection closed by the upstream before any answer (an idle keep-alive the upstream had
just timed out) is sent once more on a new connection when that is safe: an idempotent
method and a body that is not a stream (RFC 9110 §9.2.2; aiohttp and Envoy do the same).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientError, ServerDisconnectedError
from aiohttp.http import RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict

from gateway.config.model import Upstream
from gateway.wire import need
from gateway.wire.framing import INTERIM, WHOLE_AT_MOST, Connection

# What hears of each interim (1xx but 101) answer, before the final one comes.
Interim = Callable[[RawResponseMessage], Awaitable[None]]


def with_fields(head: bytes, fields: bytes) -> bytes:
    """A serialized head (ending in its empty line) with serialized fields ("name: value"
    and CRLF each) added after its own."""
    return b"".join((head[:-2], fields, b"\r\n"))


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_EMPTY_BODY_MEANS_ZERO = frozenset({"POST", "PUT", "PATCH"})


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


class StreamedBody:
    """What a request body that arrives while it is sent looks like to this client."""

    def __aiter__(self) -> AsyncIterator[bytes]:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Target:
    """Where an upstream URL points, taken apart once."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    base_path: str  # prepended to every request target, without a trailing slash
    authority: str  # the Host field when the client sent none

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        default_port = 443 if secure else 80
        port = parts.port or default_port
        host = parts.hostname or ""
        authority = host if port == default_port else f"{host}:{port}"
        if ":" in host:  # an IPv6 literal keeps its brackets in Host
            authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        return cls(host=host, port=port, ssl=ssl.create_default_context() if secure else None,
                   base_path=parts.path.rstrip("/"), authority=authority)


class _Expiry:
    """asyncio.timeout_at's work for one exchange, without its context manager: a timer
    that cancels the task, and whether it was the one that did (then the cancellation is
    the deadline's, taken back and answered 504, as asyncio.timeout turns it into
    TimeoutError). The context manager's object and coroutines cost ~15k instructions per
    proxied request more (callgrind, tests/perf/bench_cpu.py: 3% of a bare route)."""

    __slots__ = ("cancelling", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False
        self.cancelling = task.cancelling()

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


class Response:
    """An upstream response head, its body, and the connection it holds until `release`.
    `body` is the whole body as bytes when it came in one read with the head, else a
    StreamReader (EMPTY_PAYLOAD for a response with no body)."""

    __slots__ = ("_conn", "_pool", "_timer", "_writer", "body", "message", "timed_out")

    def __init__(self, pool: H1Pool, conn: Connection, message: RawResponseMessage,
                 body: StreamReader | bytes, writer: asyncio.Task[None] | None) -> None:
        self._pool: H1Pool | None = pool
        self._conn = conn
        self._writer = writer
        self._timer: asyncio.TimerHandle | None = None
        self.message = message
        self.body = body
        self.timed_out = False

    def watch(self, deadline: float) -> None:
        """Bound the rest of the body by the exchange's deadline (loop time)."""
        body = self.body
        if self._timer is None and not isinstance(body, bytes) and not body.is_eof():
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        body = self.body
        if not isinstance(body, bytes) and not body.is_eof():
            self.timed_out = True
            body.set_exception(TimeoutError())
            self._conn.abort()

    def release(self) -> None:
        """Give the connection back: to the idle pool when the exchange ended cleanly."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # The body fed to its end without an error is enough (what the client did not read
        # is not on the wire): the connection knows that of its response (`reusable`).
        writer = self._writer
        clean = True
        if writer is not None and not writer.done():
            writer.cancel()
            clean = False
        pool.give_back(self._conn, reusable=clean)


class H1Pool:
    """Keep-alive connections to one upstream, at most `max_connections` at a time.

    Past the limit a request waits for a connection (like aiohttp's connector), within its
    deadline. Idle connections are taken most recently used first, so a burst's extra
    connections age out on the upstream's side instead of all staying half-warm.
    """

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.name = upstream.name
        self.target = Target.of(upstream.url)
        self.limit = upstream.max_connections
        self.idle: deque[Connection] = deque()
        self.busy = 0  # connections lent out or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        # The loop its requests run on, as last seen: on Python 3.11 get_running_loop() and
        # current_task() without a loop each make a getpid system call (their fork check),
        # two per request that asking current_task(loop) spares.
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ connections
    def _idle(self) -> Connection | None:
        """An idle connection that may carry another exchange, if there is one: the usual
        case, taken without a coroutine of its own."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.reusable():
                self.busy += 1
                return conn
            conn.close()
        return None

    async def _lend(self) -> tuple[Connection, bool]:
        """A connection and whether it was used before (then it may turn out stale)."""
        while True:
            conn = self._idle()
            if conn is not None:
                return conn, True
            if self.busy < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, but leaving (deadline, client gone): pass it on
                elif waiter in self._waiters:  # a wake-up may have skipped it already
                    self._waiters.remove(waiter)
                raise
        self.busy += 1
        try:
            return await self._connect(), False
        except BaseException:
            self.busy -= 1
            self._wake()
            raise

    async def _connect(self) -> Connection:
        target, up = self.target, self.upstream
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(up.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop), target.host, target.port, ssl=target.ssl,
                    server_hostname=target.host if target.ssl else None)
        except TimeoutError:
            raise UpstreamError(504, f"upstream {self.name!r} did not accept a connection "
                                f"within {up.connect_timeout:g}s") from None
        except OSError as exc:
            reason = (exc.reason if isinstance(exc, ssl.SSLError) and exc.reason
                      else exc.strerror or str(exc))
            raise UpstreamError(502, f"upstream {self.name!r} is unreachable: {reason}") from exc
        return conn

    def give_back(self, conn: Connection, reusable: bool) -> None:
        self.busy -= 1
        if reusable and not self._closed and conn.reusable():
            self.idle.append(conn)
        else:
            conn.close()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close the idle connections; those lent out close when they come back."""
        self._closed = True
        while self.idle:
            self.idle.pop().close()

    # ------------------------------------------------------------------ exchanges
    async def request(self, method: str, path_qs: str, headers: CIMultiDict[str],
                      body: StreamedBody | bytes | None, added: bytes = b"",
                      interim: Interim | None = None) -> Response:
        """Send a request and wait for the final response head; each interim answer (1xx
        but 101, RFC 9110 §15.2) before it goes to `interim`, or is skipped without one.

        `headers` is sent as it is, Host first if it is there (the client's, for a
        transparent proxy); framing fields are set here from what `body` is. `added`:
        further fields, already serialized (CRLF after each), sent after `headers`.
        """
        loop = self._loop
        task = asyncio.current_task(loop) if loop is not None else None
        if loop is None or task is None:  # the first request, or on another loop (tests)
            loop = self._loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            assert task is not None
        deadline = loop.time() + self.upstream.timeout
        chunked = False
        first = next(iter(headers), "")
        if first.lower() != "host" or len(headers.getall("Host")) != 1:
            headers = self._host_first(headers)
        if body is None:
            if method in _EMPTY_BODY_MEANS_ZERO and "Content-Length" not in headers:
                headers["Content-Length"] = "0"  # what aiohttp's client sent, too
        elif isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
            chunked = True
        try:
            head = _serialize_headers(f"{method} {self.target.base_path}{path_qs} HTTP/1.1",
                                      headers)
        except ValueError:
            raise UpstreamError(400, "a request header holds a control character") from None
        if added:
            head = with_fields(head, added)
        retry = method in _IDEMPOTENT and not isinstance(body, StreamedBody)
        expiry = _Expiry(task)
        timer = loop.call_at(deadline, expiry.fire)
        try:
            while True:
                conn = self._idle()
                reused = conn is not None
                if conn is None:
                    conn, reused = await self._lend()
                try:
                    response = await self._exchange(conn, method, head, body, chunked,
                                                    interim)
                except _Stale:
                    if not (reused and retry):
                        raise UpstreamError(502, f"upstream {self.name!r} broke the "
                                            f"exchange: closed the connection before "
                                            f"answering") from None
                    retry = False  # once, on a fresh connection
                    continue
                response.watch(deadline)
                return response
        except asyncio.CancelledError:
            if expiry.fired and task.uncancel() <= expiry.cancelling:
                raise UpstreamError(504, f"upstream {self.name!r} did not answer in time"
                                    ) from None
            raise
        finally:
            timer.cancel()

    def _host_first(self, headers: CIMultiDict[str]) -> CIMultiDict[str]:
        """Host leads the header section (RFC 9112 §3.2 asks user agents for that); the
        client's own when it sent one, else the upstream's authority."""
        hosts = headers.getall("Host", ())
        ordered: CIMultiDict[str] = CIMultiDict(Host=hosts[0] if hosts else self.target.authority)
        if hosts:  # a copy without them, in C: a pass in Python cost ~1.4 us more per request
            headers = headers.copy()
            del headers["Host"]
        ordered.extend(headers)
        return ordered

    async def _exchange(self, conn: Connection, method: str, head: bytes,
                        body: StreamedBody | bytes | None, chunked: bool,
                        interim: Interim | None) -> Response:
        writer: asyncio.Task[None] | None = None
        answered = False
        try:
            # Bytes past the response's end are dropped and the connection closed after it
            # (RFC 9112 §6.3; gateway/wire/framing.py).
            conn.begin(head_only=method == "HEAD")
            transport = conn.transport
            if transport is None:
                raise _Stale
            if body is None:
                transport.write(head)
            elif isinstance(body, bytes):
                transport.writelines((head, body))  # one send for small bodies
            else:
                transport.write(head)
                writer = asyncio.get_running_loop().create_task(_send_body(conn, body, chunked))
                writer.add_done_callback(lambda task: _body_failed(conn, task))
            while True:
                try:
                    arrival = conn.arrival()
                    if arrival is not None:
                        await arrival
                    message, payload = conn.head()
                except (ServerDisconnectedError, ConnectionResetError):
                    raise _Stale from None
                if message.code not in INTERIM:
                    break
                if interim is not None:
                    await interim(message)
            answered = True
            return Response(self, conn, message, payload, writer)
        except _BodyFailure as failure:
            raise failure.cause from None
        except (HttpProcessingError, ClientError) as exc:
            detail = getattr(exc, "message", "") or str(exc) or type(exc).__name__
            raise UpstreamError(502, f"upstream {self.name!r} broke the exchange: "
                                f"{detail}") from exc
        except OSError as exc:
            raise UpstreamError(502, f"upstream {self.name!r} broke the exchange: "
                                f"{exc.strerror or exc}") from exc
        finally:
            if not answered:
                if writer is not None and not writer.done():
                    writer.cancel()
                self.give_back(conn, reusable=False)


class _Stale(Exception):
    """The connection closed before any answer: maybe an idle keep-alive the upstream shut."""


class _BodyFailure(Exception):
    """Carries why the request body could not be sent to the reader of the response."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _send_body(conn: Connection, body: StreamedBody, chunked: bool) -> None:
    """Stream a request body to the upstream with write flow control."""
    async for chunk in body:
        transport = conn.transport
        if transport is None:
            raise ConnectionResetError("the upstream closed the connection")
        if not chunk:
            continue
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        await conn.drain()
    if chunked and conn.transport is not None:
        conn.transport.write(b"0\r\n\r\n")


def _body_failed(conn: Connection, task: asyncio.Task[None]) -> None:
    """A request body that fails (too large, client gone) ends the exchange: the reader of
    the response gets the cause, and the half-sent request's connection is dropped."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    conn.fail(_BodyFailure(exc))


__all__ = ["EMPTY_PAYLOAD", "WHOLE_AT_MOST", "BodyTooLarge", "H1Pool", "Interim",
           "RawResponseMessage", "Response", "StreamedBody", "UpstreamError"]


# ---------------------------------------------------------------------------- probes
# What this client takes from aiohttp beyond the parser (probed in gateway/wire/framing.py):
# the parsed head and the body stream it hands on.
@need("aiohttp", "RawResponseMessage.code/reason/headers, StreamReader.is_eof/exception/"
                 "total_bytes/read_nowait/iter_any/set_exception")
def _head_and_body() -> None:
    wanted = {
        RawResponseMessage: ("code", "reason", "headers", "should_close"),
        StreamReader: ("is_eof", "exception", "total_bytes", "read_nowait", "iter_any",
                       "set_exception"),
    }
    for cls, names in wanted.items():
        absent = [n for n in names if not hasattr(cls, n) and
                  n not in getattr(cls, "_fields", ()) and n not in _instance_names(cls)]
        if absent:
            raise AttributeError(f"{cls.__name__} has no {', '.join(absent)}")


def _instance_names(cls: type) -> set[str]:
    """Names an instance sets in __init__ (StreamReader.total_bytes) as far as the class
    declares them: annotations or __slots__."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
        slots = getattr(klass, "__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    return names
