"""aiohttp's response-writing internals the proxy path relies on, and their probes.

Two shortcuts on the hot path are built on aiohttp names that are not public API:

* `serialize_head`: aiohttp's C serializer of a start line and header fields (the same call
  aiohttp makes for every response), which also refuses a field holding CR, LF or another
  control character (RFC 9110 §5.5) with ValueError;
* `response_head`: the head aiohttp's StreamResponse.prepare writes for an HTTP/1.1
  keep-alive answer with a Content-Length, made in one C call: the fields prepare adds when
  they are missing (Content-Type for a body, Date from aiohttp's once-a-second clock,
  Server) added as it adds them;
* `Prebuilt`: a response whose head is already serialized (a cache hit) is handed to
  aiohttp's StreamWriter as its pending head (`_headers_buf`), so `write_eof` sends head and
  body in one write. A StreamWriter that does not send a pending head with the body (aiohttp
  before 3.12) would write the body with no status line at all: the probe below writes a
  Prebuilt through a real StreamWriter and checks every byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import StreamWriter, _serialize_headers
from multidict import CIMultiDict

from gateway.wire import need


def serialize_head(start_line: str, fields: CIMultiDict[str]) -> bytes:
    """`start_line`, each field as "name: value", each line CRLF-ended, and the empty line.
    ValueError if a name or value holds a control character."""
    head: bytes = _serialize_headers(start_line, fields)
    return head


def response_head(status: int, reason: str, fields: CIMultiDict[str]) -> bytes:
    """What StreamResponse.prepare writes for an HTTP/1.1 keep-alive answer to a GET whose
    body (not empty) has the Content-Length in `fields`: the fields it would add are added
    to `fields` (in its order), then the head is serialized. Its own way costs three
    coroutines and a pass over the fields in Python per answer. ValueError if a field
    holds a control character."""
    if "Content-Type" not in fields:
        fields["Content-Type"] = "application/octet-stream"
    if "Date" not in fields:
        fields["Date"] = rfc822_formatted_time()
    if "Server" not in fields:
        fields["Server"] = SERVER_SOFTWARE
    return serialize_head(f"HTTP/1.1 {status} {reason}", fields)


class OneWrite(web.StreamResponse):
    """A response whose whole body is at hand: head and body leave in one write.

    StreamResponse sends the head as soon as it is prepared, so the body costs a second
    send (and a second TCP segment); aiohttp's own `web.Response` holds the head back until
    the body is written, through this class attribute. Streamed bodies keep the immediate
    head, so a slow upstream body never delays the status line.
    """

    _send_headers_immediately = False


class Prebuilt(web.StreamResponse):
    """A stored response whose head is serialized already: head and body leave in one
    write, without aiohttp's per-response pass over the header fields (a fifth of a cache
    hit's CPU, tests/perf/bench_cache.py). Only for what that pass would leave as it is:
    an HTTP/1.1 keep-alive GET with a body, every field present (the caller checks), or a
    HEAD of one, whose head leaves alone (written with an empty write_eof).
    """

    _send_headers_immediately = False

    def __init__(self, status: int, reason: str | None, head: bytes, length: int) -> None:
        super().__init__(status=status, reason=reason)
        self._head = head
        self._length = length

    async def prepare(self, request: web.BaseRequest) -> StreamWriter | None:
        """StreamResponse.prepare in one step: its _start awaits three more coroutines
        (_prepare_headers, the request's prepare hook, _write_headers) whose work here is
        four assignments. The hook is a no-op for the low-level server's BaseRequest."""
        if self._payload_writer is not None or self._eof_sent:
            return None
        writer = request._payload_writer
        assert isinstance(writer, StreamWriter)
        self._req, self._payload_writer = request, writer
        self._must_be_empty_body = request.method == "HEAD"  # else a GET answer's body
        self._keep_alive = True
        writer.length = self._length
        writer._headers_buf = self._head  # written with the body, by write_eof
        writer._headers_written = False
        return writer


# ---------------------------------------------------------------------------- probes
_SAMPLE = CIMultiDict([("Content-Type", "text/plain"), ("X-Two", "a"), ("x-two", "b")])


@need("aiohttp", "aiohttp.http_writer._serialize_headers(start_line, fields) -> bytes")
def _serializer_writes_the_head() -> None:
    got = serialize_head("HTTP/1.1 200 OK", _SAMPLE)
    want = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Two: a\r\nx-two: b\r\n\r\n"
    if got != want:
        raise ValueError(f"serialized {got!r}, expected {want!r}")
    try:
        serialize_head("HTTP/1.1 200 OK", CIMultiDict({"X-Bad": "a\r\nInjected: 1"}))
    except ValueError:
        return
    raise ValueError("a field value holding CR LF was serialized instead of refused")


@need("aiohttp", "web.StreamResponse._send_headers_immediately (the head held back until "
                 "the body is written, as web.Response does)")
def _head_can_wait_for_the_body() -> None:
    if web.StreamResponse._send_headers_immediately is not True:
        raise AttributeError("StreamResponse._send_headers_immediately is not True")
    if web.Response._send_headers_immediately is not False:
        raise AttributeError("web.Response no longer holds its head back this way")


class _Recorder(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()

    def write(self, data: Any) -> None:
        self.sent += data

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        for data in list_of_data:
            self.sent += data

    def is_closing(self) -> bool:
        return False


class _Request:
    """What Prebuilt.prepare reads of a web.BaseRequest."""

    def __init__(self, writer: StreamWriter, method: str = "GET") -> None:
        self._payload_writer = writer
        self.method = method


def _drive(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Run a coroutine that must not wait for anything (writes to a transport never
    paused), without an event loop: verify may be called from inside one."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("writing to an unpaused transport waited for something")


@need("aiohttp", "StreamWriter._headers_buf/_headers_written and StreamResponse._req, "
                 "_payload_writer, _eof_sent, _must_be_empty_body, _keep_alive (a prepared "
                 "head sent with the body by write_eof)")
def _prebuilt_head_leaves_with_the_body() -> None:
    loop = asyncio.new_event_loop()
    try:
        transport = _Recorder()
        protocol = BaseProtocol(loop)
        protocol.connection_made(transport)
        writer = StreamWriter(protocol, loop)
        head = serialize_head("HTTP/1.1 200 OK", CIMultiDict({"Content-Length": "4"}))
        response = Prebuilt(200, "OK", head, 4)
        request: Any = _Request(writer)
        _drive(response.prepare(request))
        _drive(response.write_eof(b"body"))
        if bytes(transport.sent) != head + b"body":
            raise ValueError(f"wrote {bytes(transport.sent)!r}, expected the head and the body")
        # A HEAD's: the pending head alone, written by an empty write_eof.
        transport.sent.clear()
        writer = StreamWriter(protocol, loop)
        response = Prebuilt(200, "OK", head, 4)
        request = _Request(writer, "HEAD")
        _drive(response.prepare(request))
        _drive(response.write_eof(b""))
        if bytes(transport.sent) != head:
            raise ValueError(f"wrote {bytes(transport.sent)!r} for a HEAD, expected the head")
    finally:
        loop.close()


@need("aiohttp", "aiohttp.helpers.rfc822_formatted_time() (the Date field StreamResponse "
                 "adds), an IMF-fixdate of now")
def _date_field() -> None:
    import email.utils
    import time

    text = rfc822_formatted_time()
    when = email.utils.parsedate_to_datetime(text).timestamp()
    if not text.endswith(" GMT") or abs(when - time.time()) > 5:
        raise ValueError(f"rfc822_formatted_time() gave {text!r}")


@need("aiohttp", "aiohttp.http.SERVER_SOFTWARE (the Server field of the gateway's answers)")
def _server_software() -> None:
    if not isinstance(SERVER_SOFTWARE, str) or "aiohttp/" not in SERVER_SOFTWARE:
        raise ValueError(f"SERVER_SOFTWARE is {SERVER_SOFTWARE!r}")


__all__ = ["SERVER_SOFTWARE", "OneWrite", "Prebuilt", "response_head", "serialize_head"]
