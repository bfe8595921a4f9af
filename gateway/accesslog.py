"""One JSON line per request on stdout. Never an API key, token or cookie: only what is here.

The lines do not go through `logging`: a LogRecord, a Formatter and a flushed write per line
cost about 230k instructions per request (callgrind, tests/perf/bench_pipeline.py), more
than half of a bare route. Here a request's line is a dict built by hand, serialized by
orjson and appended to a buffer; the buffer is written once per turn of the event loop, so
a busy worker makes one write() call for many requests.

Lines are never cut or mixed: several workers share one stdout (a pipe, under a container
runtime), and POSIX makes a pipe write of at most PIPE_BUF bytes atomic, so each write()
carries whole lines and at most PIPE_BUF bytes, unless one line alone is longer. Nothing
buffered is lost at shutdown: `close` (drain) and interpreter exit write out the rest.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

# Writes of at most this many bytes to a pipe are never interleaved with another writer's.
ATOMIC_WRITE = select.PIPE_BUF


class AccessRecord:
    """What the pipeline learns about one request, filled in as the request goes."""

    __slots__ = ("bytes", "cache", "client_ip", "duration", "encoding", "error", "experiment",
                 "method",
                 "path", "ratelimit", "request_id", "route", "status", "upstream",
                 "upstream_duration")

    def __init__(self, request_id: str, method: str, path: str, client_ip: str) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.client_ip = client_ip
        self.route: str | None = None
        self.status = 0
        self.bytes = 0
        self.duration = 0.0
        self.upstream: str | None = None
        self.upstream_duration: float | None = None
        self.cache: str | None = None
        self.encoding: str | None = None  # the content coding served, where one was chosen
        self.ratelimit: str | None = None
        self.error: str | None = None
        # What experiments observe once the request is answered (not logged).
        self.experiment: Any = None

    def fields(self, now: float) -> dict[str, object]:
        """The line's fields; absent ones are left out, not written as null."""
        data: dict[str, object] = {
            "request_id": self.request_id, "method": self.method, "path": self.path,
            "client_ip": self.client_ip, "status": self.status, "bytes": self.bytes,
            "duration": round(self.duration, 6), "time": now,
        }
        if self.route is not None:
            data["route"] = self.route
        if self.upstream is not None:
            data["upstream"] = self.upstream
        if self.upstream_duration is not None:
            data["upstream_duration"] = round(self.upstream_duration, 6)
        if self.cache is not None:
            data["cache"] = self.cache
        if self.encoding is not None:
            data["encoding"] = self.encoding
        if self.ratelimit is not None:
            data["ratelimit"] = self.ratelimit
        if self.error is not None:
            data["error"] = self.error
        return data

    def to_json(self) -> bytes:
        return orjson.dumps(self.fields(time.time()))


class AccessLog:
    """Buffered JSON lines to a file descriptor, written once per event-loop turn."""

    def __init__(self, fd: int, clock: Callable[[], float] = time.time) -> None:
        self.fd = fd
        self._clock = clock
        self._pending: list[bytes] = []
        self._scheduled = False
        atexit.register(self.flush)

    def write(self, record: AccessRecord) -> None:
        self._pending.append(orjson.dumps(record.fields(self._clock()),
                                          option=orjson.OPT_APPEND_NEWLINE))
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a test, the interpreter ending): write now
                self.flush()

    def flush(self) -> None:
        """Write every pending line: whole lines, at most ATOMIC_WRITE bytes per write()."""
        self._scheduled = False
        lines, self._pending = self._pending, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > ATOMIC_WRITE:
                self._write_all(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write_all(b"".join(chunk))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                # stdout set non-blocking by someone else and full: wait until it drains
                # rather than drop lines.
                select.select([], [self.fd], [])
                continue
            except OSError:
                return  # stdout closed (the log reader went away): nowhere to write
            view = view[written:]

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)


def access_log(enabled: bool) -> AccessLog | None:
    if not enabled:
        return None
    sys.stdout.flush()  # anything printed before keeps its place in front of the lines
    return AccessLog(sys.stdout.fileno())
