"""Rules for the client side of a connection: deadlines, refusals and the bad-request log.

Pure decisions, no sockets: `gateway.wire.server` applies them to aiohttp's protocol and
`gateway.wire.listener` to the listening socket. A connection is either waiting for a
request head or inside an exchange, and each state has one deadline:

- waiting on a new connection: `header_timeout` from the accept; nothing came -> silent
  close, some bytes came -> 408 (nginx's client_header_timeout);
- waiting on a kept-alive connection: `idle_timeout` from the end of the last response while
  nothing arrives (silent close), `header_timeout` from the first byte of the next head (408);
- inside an exchange whose request body is still arriving: `body_timeout` between two reads
  (408, or a cut connection once the response started: nginx's client_body_timeout).
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate

from gateway import metrics
from gateway.config.model import Listen
from gateway.problem import problem_body

log = logging.getLogger("gateway.edge")


class Reason(enum.StrEnum):
    """The `reason` label of gateway_bad_requests_total: a bounded set."""

    REQUEST_LINE = "request_line"
    METHOD = "method"
    VERSION = "version"
    URI_TOO_LONG = "uri_too_long"
    HEADER = "header"
    HEADER_TOO_LARGE = "header_too_large"
    HEADER_TIMEOUT = "header_timeout"
    BODY = "body"
    BODY_TIMEOUT = "body_timeout"
    TLS = "tls"


BAD_REQUESTS_BY = {reason: metrics.BAD_REQUESTS.labels(reason.value) for reason in Reason}


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the gateway answers to a request it cannot or will not parse."""

    status: int
    reason: Reason
    detail: str  # fixed text: never echoes what the client sent


@dataclass(frozen=True, slots=True)
class ConnectionRules:
    """The listener's timeouts and connection cap, from `listen`."""

    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 30.0
    max_connections: int = 10_000

    @classmethod
    def from_listen(cls, listen: Listen) -> ConnectionRules:
        return cls(listen.header_timeout, listen.idle_timeout, listen.body_timeout,
                   listen.max_connections)


class Expiry(enum.Enum):
    """What happens when a connection's deadline passes."""

    CLOSE = "close"  # silently: nothing of a request came
    HEAD = "head"  # 408: a request head started but did not complete in time
    BODY = "body"  # 408 or a cut: the request body stalled


def waiting_deadline(rules: ConnectionRules, since: float, head_at: float | None,
                     fresh: bool) -> tuple[float, Expiry]:
    """When a connection waiting for a request head gives up, and how.

    `since`: the accept (fresh) or the end of the last response; `head_at`: when the first
    byte of the next head arrived, None while nothing did. A new connection gets
    `header_timeout` from its accept for the whole head, so connecting early buys no time.
    """
    if fresh:
        return since + rules.header_timeout, Expiry.CLOSE if head_at is None else Expiry.HEAD
    if head_at is None:
        return since + rules.idle_timeout, Expiry.CLOSE
    return max(since, head_at) + rules.header_timeout, Expiry.HEAD


def version_refusal(version: tuple[int, int]) -> Refusal | None:
    """HTTP/1.0 and 1.1 are served; 0.9 is a bad request; any other version is 505.

    RFC 9110 §2.5 would process HTTP/1.2 as 1.1, but aiohttp's C parser (llhttp) refuses
    minor versions above 1 before the gateway sees the request, so they get 505 like 2.0 and
    3.0 do (RFC 9110 §15.6.6) rather than a parser's 400.
    """
    if version in ((1, 1), (1, 0)):
        return None
    if version[0] == 0:
        return Refusal(400, Reason.VERSION, "HTTP/0.9 requests are not served; use HTTP/1.1")
    return Refusal(505, Reason.VERSION, f"HTTP/{version[0]}.{version[1]} is not supported on "
                   "this listener; use HTTP/1.1")


HEAD_TIMEOUT_DETAIL = "the request head did not arrive within the header timeout"
BODY_TIMEOUT_DETAIL = "the request body stalled for longer than the body timeout"


def timeout_answer(detail: str) -> bytes:
    """A complete 408 response that closes the connection, written outside any handler."""
    body = problem_body(408, detail)
    return (b"HTTP/1.1 408 Request Timeout\r\n"
            b"Content-Type: application/problem+json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n"
            b"Date: %s\r\n\r\n%s") % (len(body), formatdate(usegmt=True).encode(), body)


# The interim answer the pipeline writes for `Expect: 100-continue` (RFC 9110 §10.1.1):
# a connection that wrote exactly this has not started its final response.
CONTINUE_SIZE = len(b"HTTP/1.1 100 Continue\r\n\r\n")


def response_started(output_size: int) -> bool:
    return output_size not in (0, CONTINUE_SIZE)


class LineBudget:
    """At most `per_second` log lines in any one-second window; counts what it holds back."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.window_end = 0.0
        self.used = 0
        self.held = 0  # lines not written since the last one that was

    def take(self, now: float) -> int | None:
        """None: do not write this line. Else how many were held back before it."""
        if now >= self.window_end:
            self.window_end = now + 1.0
            self.used = 0
        if self.used >= self.per_second:
            self.held += 1
            return None
        self.used += 1
        held, self.held = self.held, 0
        return held


_ECHO = re.compile(r"""\s(?:b'|b"|bytearray\(|')""")


def brief(text: str, limit: int = 40) -> str:
    """The parser's reason without the bytes it quotes, on one line of at most `limit`
    characters, control bytes escaped: short and safe in any log."""
    echo = _ECHO.search(text)
    words = " ".join((text[:echo.start()] if echo else text).split()).rstrip(": ")
    words = words.removeprefix("Bad status line: ")  # the reason label says as much
    clean = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in words)
    return clean if len(clean) <= limit else clean[:limit] + "..."


# Reasons whose parser text tells the operator more than the label; the others would only
# repeat it ("method: Invalid method encountered").
_VARIED = frozenset({Reason.REQUEST_LINE, Reason.HEADER, Reason.BODY})


class BadRequestLog:
    """Counts every refused request by reason; writes one WARNING line, no traceback, for
    at most `logging.bad_request_lines_per_second` of them per second in this process."""

    def __init__(self, per_second: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = LineBudget(per_second)
        self.clock = clock

    def configure(self, per_second: int) -> None:
        """A new budget, from a (re)loaded config: its first window starts empty."""
        self.budget = LineBudget(per_second)

    def report(self, reason: Reason, status: int, peer: str, detail: str) -> None:
        BAD_REQUESTS_BY[reason].inc()
        held = self.budget.take(self.clock())
        if held is None:
            return
        # ~100 bytes a line in the default format (measured, tests/perf/fuzz_edge.py): 10
        # lines a second for 5 minutes are ~300 KB per process.
        text = brief(detail) if detail and reason in _VARIED else ""
        tail = f" (+{held} not logged)" if held else ""
        log.warning("bad request %s %d %s%s%s", peer or "?", status, reason.value,
                    f": {text}" if text else "", tail)


BAD_REQUEST_LOG = BadRequestLog()

__all__ = [
    "BAD_REQUEST_LOG",
    "BODY_TIMEOUT_DETAIL",
    "CONTINUE_SIZE",
    "HEAD_TIMEOUT_DETAIL",
    "BadRequestLog",
    "ConnectionRules",
    "Expiry",
    "LineBudget",
    "Reason",
    "Refusal",
    "brief",
    "response_started",
    "timeout_answer",
    "version_refusal",
    "waiting_deadline",
]
