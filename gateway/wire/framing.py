"""One upstream connection: its socket protocol, where each response ends on the wire, and
what to do with bytes past that end.

`Connection` is the asyncio protocol of a keep-alive connection of gateway/wire/h1client.py.
It drives aiohttp's C response parser (llhttp) itself, with parsers kept from exchange to
exchange for as long as the connection stays reusable (llhttp reads response after response
on one keep-alive stream): one for responses with a body, one for heads alone (HEAD
answers, whose parser must not expect a body, and the heads of whole responses below).
aiohttp's client
protocol (`ResponseHandler`) around the same parser, with a framing layer in front of it,
cost ~32k instructions more per proxied request (callgrind: tests/perf/bench_cpu.py --parts,
the route with no stage, 434.8k against 402.8k; bench_pipeline.py, the bare route, 401.9k
against 369.7k): a new parser and a read timer per exchange, a queue of heads, a
`data_received(b"")` re-entry when the body was read, the same connection checks made
twice. Here one read that brings a whole small response is one `feed_data` call (of its
head, below) and one future woken, which the exchange awaits without a coroutine.

The usual answer, a small response whole in the first read of its exchange (a head whose
Content-Length the rest of the read matches exactly, at most `WHOLE_AT_MOST` bytes, nothing
before or after it), skips the body machinery: its head alone goes to the bodiless parser
(the one HEAD answers use) and its body is handed out as bytes, with no StreamReader to
make, feed and read and no look past its end (there is nothing past it): ~6k instructions
less per proxied request (bench_cpu.py --parts, the route with no stage, 402.8k against
397.0k; bench_pipeline.py, the bare route, 369.7k against 362.5k). Anything else
(interim answers, chunks, a body in further reads, bytes past it, a head the parser
refuses) goes to the parser with bodies from the first byte, so every framing question
below is that parser's.

Reading pauses the socket when a body's reader falls behind (the body's StreamReader asks
for it past twice `READ_BUFFER`) and resumes when it catches up; the parser itself is never
paused, so at most one socket read more than that is held.

RFC 9112 §6.3: a response's length is its Content-Length (or its chunked framing); bytes
that follow and were not asked for are no response at all. A recipient discards them and
must not read a next response from that connection. llhttp reads on past the end of a
response as if a next one began: garbage there raises, and the complete response parsed
from the same read is lost with the error (the parser keeps its finished messages until the
call returns). So the connection steps in
- when bytes arrive after the final response is complete, or a message after it: dropped,
  the connection marked for closing (`excess`);
- when the parser raises after the final response completed: the same;
- when the parser raises before the final response's head came out of it: the bytes of
  this exchange (kept only until that head is out, usually one read, so no copy) are parsed
  again by throw-away parsers to find the shortest prefix that holds the complete
  response, and a fresh parser reads that prefix. Nothing of a prefix that breaks inside
  the response is kept: that is a broken response (502);
- when a read ended in the first bytes of something that looks like a next response
  (a status line cut short parses without error): `HttpParser.feed_eof` reports a message
  that had begun, and the connection is marked likewise. That check is made once per
  exchange, on the read that completes the response.

Private names (probed at start, see `gateway.wire`): the C parser `aiohttp.http.
HttpResponseParser`, its constructor's keywords and its `feed_data` / `feed_eof` contract
(`(messages, upgraded, tail)`; `feed_eof` returns the message a read had begun), and what
its body StreamReaders ask of their protocol (`pause_reading`, `resume_reading`,
`connected`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from typing import Any

from aiohttp import ClientOSError, ClientPayloadError, ServerDisconnectedError
from aiohttp.http import HttpResponseParser, RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gateway.wire import need

READ_BUFFER = 64 * 1024  # per connection; reading pauses at twice this (aiohttp's default)
# The largest body handed out as bytes when it came whole with its head (proxy.py relays
# bodies up to this size in one write); a larger one streams through a StreamReader.
WHOLE_AT_MOST = 64 * 1024
MAX_LINE = 8190  # the status line
MAX_FIELD = 65536  # one header field
_TRIAL_LIMIT = 2**30  # throw-away parsers never pause for flow control
# Bytes of one exchange kept for a re-parse until the final head is out (a head is at most
# ~64 KiB here): an upstream streaming 1xx answers without end must not grow it forever.
KEEP_AT_MOST = 1024 * 1024
# RFC 9110 §6.4.1: 1xx, 204 and 304 answers have no content, whatever their fields say.
_NO_CONTENT = frozenset((204, 304, *range(100, 200)))
# What transport.pause_reading/resume_reading raise on a transport without flow control.
_NO_FLOW_CONTROL = (AttributeError, NotImplementedError, RuntimeError)

Head = tuple[RawResponseMessage, StreamReader | bytes]


# 1xx other than 101: interim answers, followed by the final one (RFC 9110 §15.2).
INTERIM = frozenset(range(100, 200)) - {101}


class _Unread:
    """The protocol a throw-away parser's bodies report flow control to: nobody."""

    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def _parser(protocol: Any, loop: asyncio.AbstractEventLoop, limit: int, head_only: bool
            ) -> Any:
    """aiohttp's response parser: reading to EOF when no length is given, bodies left encoded
    (the client gets them as the upstream sent them)."""
    return HttpResponseParser(
        protocol, loop, limit, max_line_size=MAX_LINE, max_field_size=MAX_FIELD,
        payload_exception=ClientPayloadError, response_with_body=not head_only,
        read_until_eof=True, auto_decompress=False)


class Connection(asyncio.Protocol):
    """A keep-alive connection to an upstream, one exchange at a time (module docstring)."""

    __slots__ = ("_bodied", "_bodiless", "_closing", "_done", "_drain", "_failure", "_final",
                 "_head_only", "_heads", "_interim", "_loop", "_parser", "_reading_paused",
                 "_seen", "_waiter", "_writing_paused", "excess", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser: Any = None  # the current exchange's: one of the two below
        self._bodied: Any = None  # for responses with a body
        self._bodiless: Any = None  # for heads alone: HEAD answers, and `_whole`'s heads
        self._head_only = False
        self._heads: deque[Head] = deque()  # heads parsed and not yet taken, in order
        self._waiter: asyncio.Future[None] | None = None  # whoever waits for a head
        self._failure: BaseException | None = None  # why no (further) head will come
        # The final response's body as the parser made it (its end is the exchange's end);
        # between exchanges an empty one, so unasked-for bytes find a finished exchange.
        self._final: StreamReader | None = EMPTY_PAYLOAD
        self._done = True  # the final response is complete: `_final` is at its end
        self._seen: bytes | None = None  # this exchange's bytes, until the final head is out
        self._interim = 0  # interim heads handed out in this exchange
        self.excess = False  # bytes past the response came: never reuse the connection
        self._closing = False  # never reuse: excess, `Connection: close`, an error...
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ exchanges
    def begin(self, head_only: bool) -> None:
        """Get ready to read the response to a request about to be sent."""
        self._head_only = head_only
        if head_only:
            parser = self._bodiless
            if parser is None:
                parser = self._bodiless = _parser(self, self._loop, READ_BUFFER, True)
        else:
            parser = self._bodied
            if parser is None:
                parser = self._bodied = _parser(self, self._loop, READ_BUFFER, False)
        self._parser = parser
        self._final = None
        self._done = False
        self._seen = b""
        self._interim = 0
        self._failure = None
        self._heads.clear()

    def arrival(self) -> asyncio.Future[None] | None:
        """What to await before `head`: None when a head is there or none will come. A
        future, not a coroutine: the exchange awaits it without one more frame."""
        if self._heads or self._failure is not None:
            return None
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def head(self) -> Head:
        """The next head of this exchange (interim ones first) with its body, once
        `arrival` said it is there; raises why none will come (ServerDisconnectedError:
        closed before answering)."""
        heads = self._heads
        if heads:
            return heads.popleft()
        if self._failure is not None:
            raise self._failure
        raise RuntimeError("no head has arrived yet")

    def fail(self, exc: BaseException) -> None:
        """End the exchange from this side (its request could not be sent): whoever waits
        for the final head gets `exc`; the connection is dropped."""
        if self._final is None and self._failure is None:
            self._failure = exc
            self._wake()
        self.abort()

    def reusable(self) -> bool:
        """Idle, open, and nothing about the last exchange forbids another."""
        transport = self.transport
        final = self._final
        return (self._done and not self._closing and transport is not None
                and not transport.is_closing() and final is not None
                and final.exception() is None)

    @property
    def should_close(self) -> bool:
        """The connection must not carry another exchange once this one is done."""
        return self._closing or self._failure is not None

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # The request head leaves in one write; waiting for an ACK only delays it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._done:
            if data:
                self._drop()  # nobody asked: not a response (RFC 9112 §6.3)
            return
        seen = self._seen
        if seen == b"" and not self._head_only and self._whole(data):
            return
        if seen is not None:  # usually one read: b"" + data is data, no copy
            seen = self._seen = seen + data
            if len(seen) > KEEP_AT_MOST:
                self._seen = None  # no re-parse for this exchange: a failure stays one
        try:
            messages, upgraded, _ = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            messages, upgraded = self._recover(exc)
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises breaks it
            self._broken(HttpProcessingError(message=f"{type(exc).__name__}: {exc}"))
            return
        if messages:
            self._take(messages)
        if upgraded:
            self._closing = True  # the rest of the stream is another protocol's
        final = self._final
        if final is not None and final.is_eof():
            self._done = True
            if not self.excess:
                self._probe_begun()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._closing = True
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the upstream closed the connection"))
        final = self._final
        if final is None:
            if self._failure is None:
                self._failure = (ServerDisconnectedError() if exc is None else
                                 ClientOSError(*exc.args) if isinstance(exc, OSError) else exc)
                self._wake()
        elif not final.is_eof():
            try:
                self._parser.feed_eof()  # a body read to the end of the stream ends here
            except Exception as underlying:  # noqa: BLE001 - any of them cuts the body short
                final.set_exception(ClientPayloadError(
                    f"Response payload is not completed: {underlying!r}"))
            else:
                if not final.is_eof():
                    final.set_exception(ClientPayloadError("Response payload is not completed"))

    # The body's StreamReader calls these for read flow control.
    @property
    def connected(self) -> bool:
        return self.transport is not None

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            with contextlib.suppress(*_NO_FLOW_CONTROL):
                self.transport.pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self.transport is not None:
                with contextlib.suppress(*_NO_FLOW_CONTROL):
                    self.transport.resume_reading()

    # Write flow control, for a request body sent while it arrives.
    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the socket takes more (write flow control)."""
        if self.transport is None:
            raise ConnectionResetError("the upstream closed the connection")
        if self._writing_paused:
            drain = self._drain
            if drain is None:
                drain = self._drain = self._loop.create_future()
            await drain

    # ------------------------------------------------------------------ bookkeeping
    def _take(self, messages: Any) -> None:
        """Heads out of the parser: interim ones, then the final one; nothing after it."""
        heads = self._heads
        final = self._final
        for message, payload in messages:
            if final is not None:
                self._drop()  # a message after the final one: not asked for
                break
            if message.should_close:
                self._closing = True
            code = message.code
            if code in INTERIM:
                self._interim += 1
                heads.append((message, EMPTY_PAYLOAD))
            else:
                final = self._final = payload
                self._seen = None
                heads.append((message, EMPTY_PAYLOAD if self._head_only or code in _NO_CONTENT
                              else payload))
        self._wake()

    def _whole(self, data: bytes) -> bool:
        """The first read of an exchange is the whole response, head and Content-Length
        body, nothing more: hand out the body as bytes (no StreamReader) and take the head
        from the bodiless parser. Anything else (interim answers, chunks, a body in more
        reads, bytes past it, an error) is left to the parser with bodies, from the start."""
        end = data.find(b"\r\n\r\n") + 4
        if end == 3 or len(data) - end > WHOLE_AT_MOST:
            return False
        head = data[:end]
        # Worth parsing only if it looks whole: the usual spelling of a Content-Length that
        # matches the bytes after the head (no head is parsed twice for a longer body).
        if b"\r\ncontent-length: %d\r\n" % (len(data) - end) not in head.lower():
            return False
        parser = self._bodiless
        if parser is None:
            parser = self._bodiless = _parser(self, self._loop, READ_BUFFER, True)
        try:
            messages, upgraded, _ = parser.feed_data(head)
            begun = parser.feed_eof()
        except Exception:  # noqa: BLE001 - the parser with bodies will say what is wrong
            self._bodiless = None
            return False
        if len(messages) != 1 or begun is not None or upgraded or messages[0][0].upgrade:
            self._bodiless = None  # where it stands is unknown: not worth finding out
            return False
        message = messages[0][0]
        code = message.code
        if code < 200 or code in _NO_CONTENT or message.chunked:
            return False
        headers = message.headers
        lengths = headers.getall("Content-Length", ())
        if len(lengths) != 1 or "Transfer-Encoding" in headers:
            return False
        length = lengths[0]
        if not (length.isascii() and length.isdigit()) or int(length) != len(data) - end:
            return False
        if message.should_close:
            self._closing = True
        self._final = EMPTY_PAYLOAD
        self._done = True
        self._seen = None
        self._heads.append((message, data[end:]))
        self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _drop(self) -> None:
        """Bytes past the response: discarded, and the connection is closed after it."""
        self.excess = True
        self._closing = True

    def _probe_begun(self) -> None:
        """The read that completed the response: did something else begin after it?"""
        try:
            begun = self._parser.feed_eof()
        except Exception:  # noqa: BLE001 - whatever had begun is not a response of ours
            begun = True
        if begun is not None:
            self._drop()

    def _broken(self, exc: HttpProcessingError) -> None:
        """The upstream sent what is not HTTP: the exchange fails (502) and the connection
        closes; a body already begun ends with the error."""
        self._closing = True
        final = self._final
        if final is None:
            self._failure = exc
            self._wake()
        elif not final.is_eof():
            final.set_exception(ClientPayloadError(exc.message or str(exc)))
        self.close()

    # ------------------------------------------------------------------ recovery
    def _recover(self, error: HttpProcessingError) -> tuple[Any, bool]:
        final = self._final
        if final is not None:
            if final.is_eof() and final.exception() is None:
                self._drop()  # the garbage came after a complete response
            else:
                self._broken(_copy(error))  # it broke inside the response
            return (), False
        data = self._seen
        end = _response_end(data, self._loop, self._head_only) if data else None
        if data is None or end is None:
            self._broken(_copy(error))
            return (), False
        parser = self._parser = _parser(self, self._loop, READ_BUFFER, self._head_only)
        messages, upgraded, _ = parser.feed_data(data[:end])
        self._drop()
        return tuple(messages)[self._interim:], upgraded


def _copy(error: HttpProcessingError) -> HttpProcessingError:
    """The parser's error without its traceback and frames (they hold the parser)."""
    return HttpProcessingError(code=error.code, message=error.message, headers=error.headers)


def _response_end(data: bytes, loop: asyncio.AbstractEventLoop, head_only: bool) -> int | None:
    """The shortest prefix of `data` that holds the final response whole; None when the
    parser fails before that (a broken response, not one with bytes after it)."""
    low, high = 0, len(data)  # ends(high) holds: at `high` the parser failed
    while low < high:
        middle = (low + high) // 2
        if _ends(data[:middle], loop, head_only) is not None:
            high = middle
        else:
            low = middle + 1
    return high if _ends(data[:high], loop, head_only) else None


def _ends(data: bytes, loop: asyncio.AbstractEventLoop, head_only: bool) -> bool | None:
    """True: `data` holds the final response whole; False: the parser failed on it;
    None: more bytes are needed. Whether it is None changes once along the prefixes
    of the same bytes (a parser only fails or completes further on): what the bisection
    of `_response_end` relies on."""
    trial = _parser(_Unread(), loop, _TRIAL_LIMIT, head_only)
    try:
        messages = trial.feed_data(data)[0]
    except HttpProcessingError:
        return False
    for message, payload in messages:
        if message.code not in INTERIM:
            return True if payload is EMPTY_PAYLOAD or payload.is_eof() else None
    return None


def _content(body: StreamReader | bytes) -> bytes | None:
    if isinstance(body, bytes):
        return body
    return body.read_nowait() if body.is_eof() else None


@need("aiohttp", "aiohttp.http.HttpResponseParser(protocol, loop, limit, max_line_size, "
      "max_field_size, payload_exception, response_with_body, read_until_eof, "
      "auto_decompress) and its feed_data/feed_eof (gateway/wire/framing.py: one parser per "
      "connection, a whole response's head alone, a response with bytes past its "
      "Content-Length)")
def _probe() -> bool:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    loop = asyncio.new_event_loop()
    try:
        conn = Connection(loop)
        found = []
        for reads in ([head, b"ok"], [head + b"ok"], [head, b"ok"], [head + b"ok"]):
            conn.begin(head_only=False)  # the parsers of the first two exchanges read again
            for data in reads:
                conn.data_received(data)
            message, body = conn._heads.popleft()
            found.append((message.code, _content(body), conn.should_close))
        conn.begin(head_only=False)
        conn.data_received(head + b"okGARBAGE")
        if conn.failure is not None or not conn.excess or not conn._heads:
            return False
        excess = _content(conn._heads.popleft()[1])
        return found == [(200, b"ok", False)] * 4 and excess == b"ok" and conn.should_close
    finally:
        loop.close()
