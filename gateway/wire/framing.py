"""Where an upstream response ends on the wire, and what to do with bytes past that end.

RFC 9112 §6.3: a response's length is its Content-Length (or its chunked framing); bytes
that follow and were not asked for are no response at all. A recipient discards them and
must not read a next response from that connection. aiohttp's C parser (llhttp) reads on
past the end of a response as if a next one began: garbage there raises, and the complete
response parsed from the same read is lost with the error (the parser keeps its finished
messages until the call returns). The gateway then answered 502 for a response it had whole.

`frame_response` installs `Framing` between `ResponseHandler` and its parser, for one
exchange. On the usual path it only passes reads through and notes the final response:
~12.7k instructions per exchange (callgrind, a 512-byte response in one read: 45.6k to
parse it bare, 58.3k framed), the price of a Python layer, paid by misses only (a hit reads
no upstream). It steps in
- when bytes arrive after the final response is complete: dropped, the connection marked
  for closing (`excess`);
- when the parser raises after the final response completed: the same;
- when the parser raises before the final response's head came out of it: the bytes of
  this exchange (kept only until that head is out, usually one read) are parsed again by
  throw-away parsers to find the shortest prefix that holds the complete response, and a
  fresh parser reads that prefix. Nothing of a prefix that breaks inside the response is
  kept: that is a broken response (502) as before;
- when a read ended in the first bytes of something that looks like a next response
  (a status line cut short parses without error): `HttpParser.feed_eof` reports a message
  that had begun, and the connection is marked likewise.

Private names (probed at start, see `gateway.wire`): `ResponseHandler._parser`, which
this module reads and replaces, `ResponseHandler._loop`, which its parsers are made with,
and the parser's `feed_data` / `feed_eof` contract
(`(messages, upgraded, tail)`; `feed_eof` returns the message a read had begun).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientPayloadError
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gateway.wire import need

Feed = tuple[Any, bool, bytes]  # what a parser's feed_data returns: messages, upgraded, tail
_NOTHING: Feed = ((), False, b"")
_TRIAL_LIMIT = 2**30  # throw-away parsers never pause for flow control
# Bytes of one exchange kept for a re-parse until the final head is out (a head is at most
# ~64 KiB here): an upstream streaming 1xx answers without end must not grow it forever.
KEEP_AT_MOST = 1024 * 1024


def is_interim(code: int) -> bool:
    """1xx other than 101: an interim answer, followed by the final one (RFC 9110 §15.2)."""
    return 100 <= code < 200 and code != 101


class _Unread:
    """The protocol a throw-away parser's bodies report flow control to: nobody."""

    connected = True
    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class Framing:
    """The parser of one exchange, seen through the response's framing (module docstring)."""

    __slots__ = ("_conn", "_field", "_interim", "_limit", "_line", "_parser", "_seen",
                 "_skip", "excess", "final")

    def __init__(self, conn: ResponseHandler, parser: Any, skip_payload: bool, read_bufsize: int,
                 max_line_size: int, max_field_size: int) -> None:
        self._conn = conn
        self._parser = parser
        self._skip, self._limit = skip_payload, read_bufsize
        self._line, self._field = max_line_size, max_field_size
        self._seen: bytes | None = b""  # this exchange's bytes, until the final head is out
        self._interim = 0  # interim messages handed to the protocol so far
        self.final: StreamReader | None = None  # the final response's body, once its head is out
        self.excess = False  # bytes past the response came: never reuse the connection

    # The protocol calls these on its parser.
    def feed_data(self, data: bytes) -> Feed:
        final = self.final
        if final is not None and final.is_eof():
            if data:
                self._drop()
            return _NOTHING
        seen = self._seen
        if seen is not None:  # usually one read: b"" + data is data, no copy
            seen = self._seen = seen + data
            if len(seen) > KEEP_AT_MOST:
                self._seen = None  # no re-parse for this exchange: a failure stays one
        try:
            result = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            result = self._recover(exc)
        messages = result[0]
        if messages and final is None:
            for message, payload in messages:
                if is_interim(message.code):
                    self._interim += 1
                else:
                    final = self.final = payload
                    self._seen = None
                    break
        if final is not None and final.is_eof() and not self.excess:
            self._probe_begun()
        return result  # type: ignore[no-any-return]

    def feed_eof(self) -> RawResponseMessage | None:
        return self._parser.feed_eof()  # type: ignore[no-any-return]

    def pause_reading(self) -> None:
        self._parser.pause_reading()

    def __getattr__(self, name: str) -> Any:  # anything else the protocol asks its parser
        return getattr(self._parser, name)

    # ------------------------------------------------------------------ bookkeeping
    def _drop(self) -> None:
        """Bytes past the response: discarded, and the connection is closed after it."""
        self.excess = True
        self._conn.force_close()

    def _probe_begun(self) -> None:
        """The read that completed the response: did something else begin after it?"""
        try:
            begun = self._parser.feed_eof()
        except Exception:  # noqa: BLE001 - whatever had begun is not a response of ours
            begun = True
        if begun is not None:
            self._drop()

    # ------------------------------------------------------------------ recovery
    def _recover(self, error: HttpProcessingError) -> Feed:
        final = self.final
        if final is not None:
            if final.is_eof() and final.exception() is None:
                self._drop()  # the garbage came after a complete response
                return _NOTHING
            raise error  # it broke inside the response: as the parser said
        data = self._seen
        end = self._response_end(data) if data else None
        if data is None or end is None:
            raise error
        parser = self._make(self._conn, self._limit)
        self._parser = parser
        messages, upgraded, tail = parser.feed_data(data[:end])
        self._drop()
        return tuple(messages)[self._interim:], upgraded, tail

    def _response_end(self, data: bytes) -> int | None:
        """The shortest prefix of `data` that holds the final response whole; None when
        the parser fails before that (a broken response, not one with bytes after it)."""
        low, high = 0, len(data)  # ends(high) holds: at `high` the parser failed
        while low < high:
            middle = (low + high) // 2
            if self._ends(data[:middle]) is not None:
                high = middle
            else:
                low = middle + 1
        return high if self._ends(data[:high]) else None

    def _ends(self, data: bytes) -> bool | None:
        """True: `data` holds the final response whole; False: the parser failed on it;
        None: more bytes are needed. Whether it is None changes once along the prefixes
        of the same bytes (a parser only fails or completes further on): what the bisection
        of `_response_end` relies on."""
        trial = self._make(_Unread(), _TRIAL_LIMIT)
        try:
            messages = trial.feed_data(data)[0]
        except HttpProcessingError:
            return False
        for message, payload in messages:
            if not is_interim(message.code):
                return True if payload is EMPTY_PAYLOAD or payload.is_eof() else None
        return None

    def _make(self, protocol: Any, limit: int) -> Any:
        """A parser as `frame_response` had aiohttp make (same class and settings)."""
        return type(self._parser)(
            protocol, self._conn._loop, limit, max_line_size=self._line,
            max_field_size=self._field, payload_exception=ClientPayloadError,
            response_with_body=not self._skip, read_until_eof=True, auto_decompress=False)


def frame_response(conn: ResponseHandler, *, skip_payload: bool, read_bufsize: int,
                   max_line_size: int, max_field_size: int) -> Framing:
    """Prepare `conn` to read one response (aiohttp's `set_response_params`, reading to EOF
    when no length is given, bodies left encoded) with `Framing` in front of its parser."""
    conn.set_response_params(skip_payload=skip_payload, read_until_eof=True,
                             auto_decompress=False, read_bufsize=read_bufsize,
                             max_line_size=max_line_size, max_field_size=max_field_size)
    framing = Framing(conn, conn._parser, skip_payload, read_bufsize, max_line_size,
                      max_field_size)
    conn._parser = framing  # type: ignore[assignment]  # its stand-in, same calls
    return framing


@need("aiohttp", "ResponseHandler._parser and the C response parser's feed_data/feed_eof "
      "(gateway/wire/framing.py: a response with bytes past its Content-Length)")
def _probe() -> bool:
    loop = asyncio.new_event_loop()
    try:
        conn = ResponseHandler(loop)
        framing = frame_response(conn, skip_payload=False, read_bufsize=2**16,
                                 max_line_size=8190, max_field_size=8190)
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE")
        if conn.exception() is not None or not framing.excess or framing.final is None:
            return False
        return framing.final.read_nowait() == b"ok" and conn.should_close
    finally:
        loop.close()
