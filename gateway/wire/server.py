"""aiohttp's server protocol with deadlines, refusals and a bounded bad-request log.

`GuardedHandler` is aiohttp's `RequestHandler` (the per-connection protocol) with:

- one timer per connection, moved lazily (a late deadline only replaces an early one when the
  early one fires), that enforces `gateway.edge`'s header, idle and body deadlines. aiohttp's
  own keep-alive timer stays as a backstop set past all of them;
- parser errors answered as problem+json (400, 414, 431, 505) with one WARNING line under the
  per-second budget and a count in gateway_bad_requests_total, instead of aiohttp's text body
  and a traceback per request;
- HTTP versions other than 1.0 and 1.1 refused before the request reaches a handler.

What it relies on in aiohttp beyond its documented API, each checked by a probe at start:
the protocol's hook methods (data_received, log_access, handle_error) and when aiohttp
calls them; `Server.request_factory` and `Server.request_handler`, read by every new
connection; RawRequestMessage._replace; LineTooLong's limit in args[1]; the text llhttp
gives an unsupported HTTP version; and what finish_response does once a response is sent.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Container, Coroutine
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import _ErrInfo

from gateway.edge import (
    BAD_REQUEST_LOG,
    BODY_TIMEOUT_DETAIL,
    HEAD_TIMEOUT_DETAIL,
    ConnectionRules,
    Expiry,
    Reason,
    Refusal,
    response_started,
    timeout_answer,
    version_refusal,
    waiting_deadline,
)
from gateway.problem import problem
from gateway.wire import need
from gateway.wire.request import request_factory

log = logging.getLogger("gateway.edge")

_VERSION_IN_LINE = re.compile(r"HTTP/(\d+)\.(\d+)")
_INF = float("inf")


class Lane(Protocol):
    """What answers a repeated request from the connection's protocol (gateway.hitlane)."""

    max_bytes: int  # longer requests are neither answered nor offered

    @property
    def seen(self) -> Container[bytes]:
        """The requests it may answer: one look, before any call."""
        ...

    def answer(self, data: bytes, peer: str, scheme: str, write: Callable[[bytes], None]
               ) -> bool:
        """Answer `data` (one whole request head, nothing after it) with one `write`, and
        say so; False (nothing written, nothing counted) leaves it to the usual path."""
        ...


class Guard:
    """The rules every connection of one listener follows (replaced whole on reload), and
    the listener's lane for repeated requests, if it has one."""

    def __init__(self, rules: ConnectionRules, lane: Lane | None = None) -> None:
        self.rules = rules
        self.lane = lane


# ---------------------------------------------------------------- parser errors

def classify(exc: HttpProcessingError, line_limit: int, field_limit: int) -> Refusal:
    """The answer to a parser error, from its type (and llhttp's reason for a bad version)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if str(limit) == str(line_limit) and line_limit != field_limit:
            return Refusal(414, Reason.URI_TOO_LONG,
                           f"the request line is longer than {line_limit} bytes")
        return Refusal(431, Reason.HEADER_TOO_LARGE,
                       f"a header field line is longer than {field_limit} bytes")
    message = exc.message if isinstance(exc.message, str) else ""
    if isinstance(exc, BadHttpMethod):
        # Newer aiohttp (3.14.5) says so; older releases quote the bytes, and a
        # TLS handshake record starts with 0x16 0x03.
        if "HTTPS" in message or "\\x16\\x03" in message:
            return Refusal(400, Reason.TLS, "TLS was sent to a plain HTTP listener")
        return Refusal(400, Reason.METHOD, "the request method is malformed")
    # Older aiohttp (3.13) raises a plain BadHttpMessage for a protocol name that is not HTTP.
    if isinstance(exc, BadStatusLine) or message.startswith("Expected HTTP/"):
        if "Invalid HTTP version" in message and (found := _VERSION_IN_LINE.search(message)):
            refusal = version_refusal((int(found[1]), int(found[2])))
            if refusal is not None:
                return refusal
        return Refusal(400, Reason.REQUEST_LINE, "the request line is malformed")
    if isinstance(exc, InvalidURLError):
        return Refusal(400, Reason.REQUEST_LINE, "the request target is malformed")
    if isinstance(exc, PayloadEncodingError) or "chunk" in message.lower():
        return Refusal(400, Reason.BODY, "the request body is malformed")
    if "Too many headers" in message:
        return Refusal(431, Reason.HEADER_TOO_LARGE, "the request has too many header fields")
    return Refusal(400, Reason.HEADER, "the request header section is malformed")


def client_fault(exc: object, line_limit: int, field_limit: int) -> Refusal | None:
    """The refusal for a malformed request; None for anything else.

    Head errors come from the parser; body errors reach the handler as RequestPayloadError
    when it reads the body (bad chunk framing, a Content-Length the body does not match).
    """
    if isinstance(exc, HttpProcessingError):
        return classify(exc, line_limit, field_limit)
    if isinstance(exc, web.RequestPayloadError):
        return Refusal(400, Reason.BODY, "the request body is malformed")
    return None


def _exception_text(exc: BaseException | None) -> str:
    if isinstance(exc, HttpProcessingError):
        return exc.message or type(exc).__name__
    return str(exc) or type(exc).__name__


def refusal_response(refusal: Refusal) -> web.Response:
    response = problem(refusal.status, refusal.detail)
    response.force_close()  # the stream may be out of step: nothing after this is trusted
    return response


# ---------------------------------------------------------------- the protocol

class GuardedHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with the deadlines of `gateway.edge`."""

    __slots__ = ("_body_at", "_busy", "_clean", "_expect", "_fresh", "_guard", "_head_at",
                 "_on_close", "_payload", "_peer", "_refusal", "_repeat", "_since",
                 "_timer", "_timer_at", "_writer", "repeated")

    def __init__(self, manager: web.Server, *, guard: Guard,
                 on_close: Callable[[], None] | None = None, accepted_at: float = 0.0,
                 **kwargs: Any) -> None:
        rules = guard.rules
        # aiohttp's keep-alive timer only ever closes a connection that waits for a request:
        # set past every deadline of ours, it is a backstop that never decides anything.
        kwargs["keepalive_timeout"] = rules.header_timeout + rules.idle_timeout + 1.0
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._on_close = on_close
        self._busy = False
        self._fresh = True
        self._since = accepted_at  # when the listener accepted it: the deadlines count from
        self._head_at: float | None = None
        self._body_at = 0.0
        self._payload: StreamReader | None = None
        self._writer: Any = None
        self._expect = False
        self._refusal: Refusal | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._peer: tuple[str, str] | None = None  # (address, scheme), once asked
        self._clean = True  # every byte so far made whole bodiless requests, one per read
        self._repeat: bytes | None = None  # the lane's candidate: the bytes of a whole head
        # The bytes of the exchange in progress if they were one whole head that came alone
        # on a connection between messages, for the lane to remember (gateway.hitlane).
        self.repeated: bytes | None = None

    # -- aiohttp's hooks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # From the accept, not from here: under load the transport is set up a task later.
        self._since = self._since or self._loop.time()
        self._arm(self._since + self._guard.rules.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        self._payload = self._writer = None
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def data_received(self, data: bytes) -> None:
        lane = None
        if data:
            payload = self._payload
            if payload is not None and not payload.is_eof():
                self._body_at = self._loop.time()
            elif self._head_at is None:
                # A new request's first bytes, on a connection whose parser is between
                # messages (_clean): the lane may know them.
                lane = self._guard.lane if self._clean else None
                if lane is not None and len(data) <= lane.max_bytes and data in lane.seen \
                        and self._idle() and self._answer(lane, data):
                    return
                self._head_at = now = self._loop.time()
                if not self._busy and not self._fresh:  # sooner than the idle deadline
                    when = now + self._guard.rules.header_timeout
                    if when < self._timer_at:  # _arm's own test, without its call
                        self._arm(when)
        if lane is None:
            # Bytes that were not looked at above (a body, the rest of a head, a request
            # behind one still queued) may leave the parser inside a request: the lane
            # never answers this connection again.
            if data:
                self._clean = False
            super().data_received(data)
        else:
            messages = self._messages
            queued = len(messages)
            super().data_received(data)
            # Still between messages only if these bytes made exactly one request without a
            # body, ending with them: after anything else (a head in pieces, pipelined
            # requests, a body, an upgrade, an error) the parser may hold part of a
            # request, and the lane never answers this connection again. (Bytes past the
            # one request's head that end in "\r\n\r\n" would be a second request, or
            # empty lines, which the parser skips between requests.)
            if len(messages) == queued + 1 and messages[-1][1] is EMPTY_PAYLOAD and \
                    data.endswith(b"\r\n\r\n") and not self._upgraded and \
                    not isinstance(messages[-1][0], _ErrInfo):
                if queued == 0 and len(data) <= lane.max_bytes:
                    self._repeat = data  # the next exchange to begin is this request's
            else:
                self._clean = False
        if self._busy and self._messages:
            self._fail_body_on_parser_error()

    def _idle(self) -> bool:
        """aiohttp's start() waits for the next request, none is queued, nothing is
        being closed, and what was written has left: the lane may answer in its place."""
        waiter = self._waiter
        transport = self.transport
        return (waiter is not None and not waiter.done() and not self._messages
                and not self._force_close and not self._close and not self._upgraded
                and transport is not None and not transport.is_closing()
                and transport.get_write_buffer_size() == 0)

    def _answer(self, lane: Lane, data: bytes) -> bool:
        """The lane's answer to `data`, if it has one, written, with the exchange's end
        kept as the usual path keeps it: the idle deadline and aiohttp's keep-alive
        backstop both count from now."""
        peer = self._peer
        if peer is None:
            transport = self.transport
            assert transport is not None
            name = transport.get_extra_info("peername")
            # As GatewayRequest's remote and scheme (gateway/wire/request.py).
            peer = self._peer = (
                "" if name is None else str(name[0]) if isinstance(name, (list, tuple))
                else str(name),
                "https" if transport.get_extra_info("sslcontext") else "http")
        assert self.transport is not None
        if not lane.answer(data, peer[0], peer[1], self.transport.write):
            return False
        self._fresh = False
        self._since = now = self._loop.time()
        self._next_keepalive_close_time = now + self._keepalive_timeout
        when = now + self._guard.rules.idle_timeout
        if when < self._timer_at:
            self._arm(when)
        return True

    def _fail_body_on_parser_error(self) -> None:
        """A framing error in a body (a bad chunk size) is queued by aiohttp as the error of
        a next request, and the body being read would wait for bytes that never come: the
        handler reading it gets the error instead, and answers 400."""
        payload = self._payload
        failed = self._messages[-1][0]
        if payload is not None and not payload.is_eof() and isinstance(failed, _ErrInfo):
            payload.set_exception(web.RequestPayloadError(failed.message))

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """aiohttp's finish_response, without its two awaits when the handler has written
        the whole response already (the proxy's every answer but an error): prepare and
        write_eof of a response whose EOF is sent return at once. What else aiohttp does
        there, parsing what followed a declined upgrade, waits for `_upgraded`."""
        if getattr(resp, "_eof_sent", False) and not self._upgraded:
            request._finish()
            self.log_access(request, resp, start_time)
            return resp, False
        return await super().finish_response(request, resp, start_time)

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        """aiohttp calls this once the response is written (or the client is gone): the
        end of the exchange. Hooked here rather than by wrapping the finish_response
        coroutine, and with the deadline arithmetic inlined, the protocol's cost per
        request went from +9.5 to +1.9 us CPU against the plain protocol (tests/perf/ab.py,
        7 rounds each; the method resolves ~4 us)."""
        self._exchange_ended()
        if self._logging_enabled:  # the gateway's own listeners have no aiohttp access log
            super().log_access(request, response, time)

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        refusal = client_fault(exc, self.max_line_size, self.max_field_size)
        gone = isinstance(exc, ConnectionError)  # the client went away: no one to tell
        if refusal is None and not gone:
            # A failure of the gateway itself: aiohttp logs it with its traceback (it is a
            # bug) and refuses to answer when a response already started.
            super().handle_error(request, status, exc, message)
            response = problem(status, "the gateway timed out answering" if status == 504 else
                               "the gateway failed to answer this request")
            response.force_close()
            return response
        if refusal is not None:
            BAD_REQUEST_LOG.report(refusal.reason, refusal.status, _peer(self),
                                   _exception_text(exc))
        if request.writer.output_size > 0:  # as aiohttp: a started response cannot change
            raise ConnectionError("the response started before the request failed")
        if refusal is None:  # written to nobody: aiohttp then finds the connection closed
            return refusal_response(Refusal(400, Reason.BODY, "the client went away"))
        return refusal_response(refusal)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's error log: a client's fault (a malformed body met while aiohttp drains
        it, a vanished client) is no traceback; handle_error has counted it already."""
        exc = kw.get("exc_info")
        if isinstance(exc, ConnectionError) or client_fault(exc, self.max_line_size,
                                                            self.max_field_size):
            return
        super().log_exception(*args, **kw)

    # -- the exchange, as the wrapped request factory sees it
    def exchange_began(self, payload: StreamReader, writer: Any, message: RawRequestMessage,
                       refusal: Refusal | None) -> None:
        self._busy = True
        self._fresh = False
        self._head_at = None
        self.repeated, self._repeat = self._repeat, None
        self._writer = writer
        self._refusal = refusal
        if payload is EMPTY_PAYLOAD:  # no body (the parser's shared one): nothing to time
            self._payload = None
            return
        self._payload = payload
        if not payload.is_eof():
            self._body_at = self._loop.time()
            self._expect = message.headers.get("Expect", "").lower() == "100-continue"
            self._arm(self._body_at + self._guard.rules.body_timeout)

    def _exchange_ended(self) -> None:
        self._busy = False
        self._refusal = None
        self._since = now = self._loop.time()
        if self.transport is not None:
            # waiting_deadline for a kept-alive connection, with head_at <= now
            rules = self._guard.rules
            when = now + (rules.idle_timeout if self._head_at is None else rules.header_timeout)
            if when < self._timer_at:  # _arm's own test, without its call
                self._arm(when)

    # -- deadlines
    def _waiting_deadline(self) -> tuple[float, Expiry]:
        return waiting_deadline(self._guard.rules, self._since, self._head_at, self._fresh)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if when >= self._timer_at:
                return  # the earlier timer re-arms for this one when it fires
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _due(self, now: float) -> tuple[float, Expiry | None]:
        if not self._busy:
            return self._waiting_deadline()
        payload = self._payload
        if payload is None or payload.is_eof():
            return _INF, None  # the handler owns the exchange; the next wait re-arms
        transport = self.transport
        if (transport is not None and not transport.is_reading()) or (
                self._expect and self._writer is not None and self._writer.output_size == 0):
            # Not the client's turn: the gateway paused reading (its buffer is full), or the
            # client waits for `100 Continue` before sending the body.
            self._body_at = now
        return self._body_at + self._guard.rules.body_timeout, Expiry.BODY

    def _expire(self) -> None:
        self._timer = None
        self._timer_at = _INF
        if self.transport is None:
            return
        now = self._loop.time()
        when, expiry = self._due(now)
        if expiry is None:
            return
        if now < when:
            self._arm(when)
            return
        if expiry is Expiry.CLOSE:
            self.force_close()
        elif expiry is Expiry.HEAD:
            self._answer_timeout(Reason.HEADER_TIMEOUT, HEAD_TIMEOUT_DETAIL)
        elif self._writer is not None and response_started(self._writer.output_size):
            BAD_REQUEST_LOG.report(Reason.BODY_TIMEOUT, 408, _peer(self), "connection cut")
            self.transport.abort()
            self.force_close()
        else:
            self._answer_timeout(Reason.BODY_TIMEOUT, BODY_TIMEOUT_DETAIL)

    def _answer_timeout(self, reason: Reason, detail: str) -> None:
        BAD_REQUEST_LOG.report(reason, 408, _peer(self), "")
        assert self.transport is not None
        self.transport.write(timeout_answer(detail))
        self.force_close()  # closes after the answer is flushed; cancels a running handler


def _peer(handler: web.RequestHandler) -> str:
    transport = handler.transport
    name = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(name, tuple):
        return str(name[0])
    return str(name or "")


# ---------------------------------------------------------------- the server's hooks

RequestFactory = Callable[..., web.BaseRequest]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def guard_server(server: web.Server) -> None:
    """Make every exchange of `server` known to its GuardedHandler, and refuse versions.

    aiohttp reads `request_factory` and `request_handler` when a connection opens, so this
    must run before the first connection. A refused version's request is rebuilt as HTTP/1.1
    with `should_close`, so the refusal goes out with an HTTP/1.1 status line and closes.
    """
    make: RequestFactory = server.request_factory
    handle: Handler = server.request_handler

    def factory(message: RawRequestMessage, payload: StreamReader, protocol: Any,
                writer: Any, task: asyncio.Task[None]) -> web.BaseRequest:
        version = message.version
        refusal = None
        if version != HttpVersion11 and version != HttpVersion10:
            refusal = version_refusal((version.major, version.minor))
            if refusal is not None:
                message = message._replace(version=HttpVersion11, should_close=True)
        if isinstance(protocol, GuardedHandler):
            protocol.exchange_began(payload, writer, message, refusal)
        return make(message, payload, protocol, writer, task)

    def handler(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        protocol = request.protocol
        if isinstance(protocol, GuardedHandler) and protocol._refusal is not None:
            return _refuse(protocol, protocol._refusal)
        return handle(request)

    server.request_factory = factory
    server.request_handler = handler


def repeated_bytes(request: web.BaseRequest) -> bytes | None:
    """The request's whole head as it came, if it came alone in one read on a connection
    between messages (GuardedHandler.repeated); None otherwise."""
    return getattr(request.protocol, "repeated", None)


async def _refuse(protocol: GuardedHandler, refusal: Refusal) -> web.StreamResponse:
    BAD_REQUEST_LOG.report(refusal.reason, refusal.status, _peer(protocol), "")
    return refusal_response(refusal)


_HANDLE_REQUEST = web.RequestHandler._handle_request.__code__
TaskFactory = Callable[..., "asyncio.Future[Any]"]


def run_handlers_inline(loop: asyncio.AbstractEventLoop) -> None:
    """Run each request's handler inside its connection's task, not in a task of its own.

    On Python 3.11 RequestHandler.start hands every request's `_handle_request` coroutine
    to loop.create_task and awaits the task (3.12 and later make it with eager_start,
    past the loop's task factory: nothing changes there). Making the task, registering it
    in asyncio's set of tasks and the loop iteration that first runs it cost 14k
    instructions per request in-process (a fake transport, callgrind: 147.7k -> 133.8k),
    6.6k of a fresh L1 cache hit over sockets (tests/perf/count_cache_hit.py).
    start() only awaits what create_task returns, so this loop's task factory gives that
    coroutine back as it is. What the task was for: a copy of the context variables per
    request (the gateway sets none), and something to cancel, which the connection's task
    is as well: a client that goes away cancels it (handler_cancellation), and a deadline
    cancels the current task, whichever it is, and takes its cancellation back.
    """
    if sys.version_info >= (3, 12):
        return
    previous: TaskFactory | None = loop.get_task_factory()
    if getattr(previous, "runs_handlers_inline", False):
        return

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if getattr(coro, "cr_code", None) is _HANDLE_REQUEST:
            return coro
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    factory.runs_handlers_inline = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


def proxy_server(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                 ) -> web.Server:
    """The proxy listener's low-level server, as the gateway runs it: GatewayRequests,
    handlers in their connection's task, and a client that goes away cancelling its
    handler (and so its upstream exchange). Must be made in the loop that serves it."""
    loop = asyncio.get_running_loop()
    run_handlers_inline(loop)
    return web.Server(handler, handler_cancellation=True, request_factory=request_factory(loop))


def protocol_factory(server: web.Server, guard: Guard, **handler_kwargs: Any
                     ) -> Callable[[Callable[[], None] | None, float], GuardedHandler]:
    """A maker of this server's connections, for a site that accepts them itself."""
    loop = asyncio.get_running_loop()

    def make(on_close: Callable[[], None] | None, accepted_at: float) -> GuardedHandler:
        return GuardedHandler(server, loop=loop, guard=guard, on_close=on_close,
                              accepted_at=accepted_at, **handler_kwargs)

    return make


# ---------------------------------------------------------------- probes

_HOOKS = {
    "data_received": ("self", "data"),
    "log_exception": ("self", "args", "kw"),
    "connection_made": ("self", "transport"),
    "connection_lost": ("self", "exc"),
    "finish_response": ("self", "request", "resp", "start_time"),
    "log_access": ("self", "request", "response", "time"),
    "handle_error": ("self", "request", "status", "exc", "message"),
}


@need("aiohttp", "RequestHandler's protocol hooks with their parameters (data_received, "
                 "connection_made/lost, handle_error, log_exception, log_access called by "
                 "finish_response)")
def _probe_hooks() -> bool:
    for name, params in _HOOKS.items():
        found = tuple(inspect.signature(getattr(web.RequestHandler, name)).parameters)
        if found != params:
            return False
    return "self.log_access(" in inspect.getsource(web.RequestHandler.finish_response)


@need("aiohttp", "RequestHandler.finish_response's steps (request._finish(), the tail of a "
                 "declined upgrade behind _upgraded, prepare and write_eof, log_access), "
                 "StreamResponse._eof_sent making prepare and write_eof return at once, and "
                 "log_access logging only when _logging_enabled")
def _probe_finish() -> bool:
    finish = inspect.getsource(web.RequestHandler.finish_response)
    if not all(step in finish for step in ("request._finish()", "self._upgraded",
                                           "await prepare_meth(request)",
                                           "await resp.write_eof()")):
        return False
    slots = {name for kind in web.RequestHandler.__mro__
             for name in getattr(kind, "__slots__", ())}
    if not {"_upgraded", "_logging_enabled"} <= slots or \
            "if self._logging_enabled" not in inspect.getsource(web.RequestHandler.log_access):
        return False
    written = web.StreamResponse()
    written._eof_sent = True
    nobody: Any = None  # neither call may look at the request or a writer
    steps: tuple[Callable[[], Coroutine[Any, Any, Any]], ...] = (
        lambda: written.prepare(nobody), written.write_eof)
    for call in steps:
        step = call()
        try:
            step.send(None)
        except StopIteration as done:
            if done.value is not None:
                return False
        else:
            step.close()
            return False
    return True


# What RequestHandler.start does with a request's task: make it (one line per Python
# release), await it, drop it. Nothing else may hold or use it (run_handlers_inline).
_TASK_LINES = frozenset({
    "task = asyncio.create_task(coro, eager_start=True)",
    "task = asyncio.Task(coro, loop=loop, eager_start=True)",
    "task = loop.create_task(coro)",
    "resp, reset = await task",
    "del task",
})


@need("aiohttp", "on Python 3.11, RequestHandler.start giving each request's _handle_request "
                 "coroutine to loop.create_task and only awaiting what it returns")
def _probe_handler_task() -> bool:
    if sys.version_info >= (3, 12):
        return True
    code = [line.split("#")[0].strip()
            for line in inspect.getsource(web.RequestHandler.start).splitlines()]
    uses = {line for line in code if re.search(r"\btask\b", line)}
    if "task = loop.create_task(coro)" not in uses or not uses <= _TASK_LINES:
        return False
    loop = asyncio.new_event_loop()
    try:
        run_handlers_inline(loop)
        handling: Any = web.RequestHandler._handle_request(None, None, None, None)  # type: ignore
        try:
            made: Any = loop.create_task(handling)
            return made is handling
        finally:
            handling.close()
    finally:
        loop.close()


@need("aiohttp", "RequestHandler's state the lane reads: start() waiting on _waiter for "
                 "_messages, data_received ignoring data once _force_close or _close, "
                 "_upgraded, and _process_keepalive closing at _next_keepalive_close_time")
def _probe_lane_state() -> bool:
    slots = {name for kind in web.RequestHandler.__mro__
             for name in getattr(kind, "__slots__", ())}
    if not {"_waiter", "_messages", "_force_close", "_close", "_upgraded",
            "_next_keepalive_close_time", "_keepalive_timeout"} <= slots:
        return False
    start = inspect.getsource(web.RequestHandler.start)
    received = inspect.getsource(web.RequestHandler.data_received)
    keepalive = inspect.getsource(web.RequestHandler._process_keepalive)
    return ("self._waiter = loop.create_future()" in start and "await self._waiter" in start
            and "if self._force_close or self._close:" in received
            and "close_time = self._next_keepalive_close_time" in keepalive)


@need("aiohttp", "RequestHandler._messages, where a parser error waits as an _ErrInfo")
def _probe_messages() -> bool:
    made = _ErrInfo(status=400, exc=BadHttpMessage("probe"), message="probe")
    return "_messages" in web.RequestHandler.__slots__ and made.message == "probe"


@need("aiohttp", "Server.request_factory and Server.request_handler, read per connection")
def _probe_server_hooks() -> bool:
    source = inspect.getsource(web.RequestHandler.__init__)
    return "manager.request_factory" in source and "manager.request_handler" in source


@need("aiohttp", "RawRequestMessage._replace(version=, should_close=)")
def _probe_replace() -> bool:
    parser = HttpRequestParser(None, None, 2**16)
    messages, _, _ = parser.feed_data(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    message = messages[0][0]._replace(version=HttpVersion11, should_close=True)
    return bool(message.version == HttpVersion11 and message.should_close)


@need("aiohttp", "the parser's errors: LineTooLong's limit in args[1], llhttp's "
                 "'Invalid HTTP version', 'Too many headers', '... chunk ...'")
def _probe_errors() -> bool:
    # Some releases' parsers look up the event loop: give them one of their own, since the
    # probes also run where none is set (gateway check).
    loop = asyncio.new_event_loop()

    def refusal(data: bytes) -> Refusal | None:
        parser = HttpRequestParser(None, loop, 2**16, max_line_size=100,
                                   max_field_size=200, max_headers=4)
        try:
            parser.feed_data(data)
        except HttpProcessingError as exc:
            return classify(exc, 100, 200)
        return None

    try:
        return _errors_classified(refusal)
    finally:
        loop.close()


def _errors_classified(refusal: Callable[[bytes], Refusal | None]) -> bool:

    checks = {
        b"GET / HTTP/1.2\r\n\r\n": 505,
        b"GET /" + b"a" * 150 + b" HTTP/1.1\r\n\r\n": 414,
        b"GET / HTTP/1.1\r\nX: " + b"a" * 250 + b"\r\n\r\n": 431,
        b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(8)) + b"\r\n": 431,
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n": 400,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": 400,
    }
    for data, status in checks.items():
        found = refusal(data)
        # The pure-Python parser accepts HTTP/1.2 as a version; the protocol refuses it then.
        if found is None and status == 505:
            continue
        if found is None or found.status != status:
            return False
    return isinstance(LineTooLong("x", 5), BadHttpMessage)


__all__ = ["Guard", "GuardedHandler", "Lane", "classify", "guard_server", "protocol_factory",
           "proxy_server", "repeated_bytes", "run_handlers_inline"]
