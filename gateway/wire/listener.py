"""A TCP listener that accepts connections itself, so that it can stop accepting.

The event loop's own servers (asyncio's and uvloop's) accept whenever the listening socket is
readable and cannot be paused; at the open-file limit libuv even accepts and drops
connections. This site owns the socket instead: a reader callback accepts up to a batch of
connections and hands each to `loop.connect_accepted_socket`. At `max_connections` (per
process, capped by the open-file limit) it removes the reader, so further connections wait
in the kernel's backlog, and it adds the reader back when a connection closes. Accepting
fails with EMFILE only when something else holds the files: then it pauses for a moment.
Every call here is public asyncio API; the site is a subclass of aiohttp's `web.BaseSite`,
which is why it lives behind the boundary (its probe checks the base's shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.config.model import Config
from gateway.wire import need
from gateway.wire.server import Guard, GuardedHandler, guard_server, protocol_factory

log = logging.getLogger("gateway.listener")

ACCEPT_BATCH = 64  # connections accepted per readable event, so one listener cannot starve
FILES_RETRY = 0.1  # seconds before accepting again after EMFILE/ENFILE
FILES_WARN_EVERY = 60.0  # seconds between two warnings about it
ADMIN_MAX_CONNECTIONS = 256  # probes, scrapes and operators need few
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_GUARDED: weakref.WeakSet[web.Server] = weakref.WeakSet()


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (as Go's runtime does); return it.

    Each client connection is a file. A soft limit below the hard one only makes the
    gateway refuse connections the operator allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def files_reserved(config: Config) -> int:
    """Files kept for everything but client connections: upstream pools, Redis, the rest."""
    upstream = sum(u.max_connections for u in config.upstreams.values())
    redis = config.redis.max_connections + 8 if config.redis is not None else 0
    return upstream + redis + 64


def connection_cap(max_connections: int, open_files: int, reserved: int) -> int:
    """Client connections this process may hold: `max_connections`, but never so many that
    the upstream and Redis connections find no file. At least half the files are for
    clients, whatever the pools' sizes."""
    if open_files <= 0 or open_files == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, open_files - min(reserved, open_files // 2)))


def _bind(host: str, port: int, reuse_port: bool, backlog: int) -> list[socket.socket]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio's create_server: "::" is IPv6 only
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@need("aiohttp", "web.BaseSite(runner, backlog=) with async start(), stop() and a name "
                 "property, the base of the gateway's listening site")
def _probe_base_site() -> bool:
    import inspect

    parameters = inspect.signature(web.BaseSite.__init__).parameters
    return ("runner" in parameters and "backlog" in parameters
            and inspect.iscoroutinefunction(web.BaseSite.start)
            and inspect.iscoroutinefunction(web.BaseSite.stop)
            and isinstance(inspect.getattr_static(web.BaseSite, "name"), property))


class GuardedSite(web.BaseSite):
    """`web.TCPSite` for a runner's server, with GuardedHandler connections and a cap."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, guard: Guard,
                 cap: int | None = None, reuse_port: bool = False, backlog: int = 1024,
                 **handler_kwargs: Any) -> None:
        super().__init__(runner, backlog=backlog)
        self.runner = runner
        self.host = host
        self.port = port
        self.guard = guard
        self.cap = cap  # the open-file cap; the rules' max_connections applies as well
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.handler_kwargs = handler_kwargs
        self.sockets: list[socket.socket] = []
        self.open = 0
        self.paused = False
        self.stopping = False
        self._pending: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._warned_at = -FILES_WARN_EVERY
        self._loop: asyncio.AbstractEventLoop | None = None
        self._make: Callable[[Callable[[], None] | None, float], GuardedHandler] | None = None

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def limit(self) -> int:
        rules = self.guard.rules.max_connections
        return rules if self.cap is None else min(rules, self.cap)

    async def start(self) -> None:
        await super().start()
        server = self.runner.server
        assert server is not None, "the runner is set up before its sites start"
        if server not in _GUARDED:
            guard_server(server)
            _GUARDED.add(server)
        self._loop = asyncio.get_running_loop()
        self._make = protocol_factory(server, self.guard, **self.handler_kwargs)
        self.sockets = _bind(self.host, self.port, self.reuse_port, self.backlog)
        if self.port == 0:
            self.port = self.sockets[0].getsockname()[1]
        self._listen()

    async def stop(self) -> None:
        self.stopping = True
        self._quiet()
        if self._retry is not None:
            self._retry.cancel()
        for sock in self.sockets:
            sock.close()
        await super().stop()

    # -- accepting
    def _listen(self) -> None:
        assert self._loop is not None
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _quiet(self) -> None:
        if self._loop is None:
            return
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self._quiet()

    def _resume(self) -> None:
        self._retry = None
        if self.paused and not self.stopping and self.open < self.limit:
            self.paused = False
            self._listen()

    def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BATCH):
            if self.open >= self.limit:
                self._pause()
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FILES:
                    self._out_of_files(exc)
                    return
                continue  # ECONNABORTED and the like: that client is gone, the next is not
            conn.setblocking(False)
            self.open += 1
            task = self._loop.create_task(self._connect(conn, self._loop.time()))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _out_of_files(self, exc: OSError) -> None:
        assert self._loop is not None
        if self._loop.time() - self._warned_at >= FILES_WARN_EVERY:
            self._warned_at = self._loop.time()
            log.warning("%s: cannot accept (%s) with %d connections open; pausing accepts "
                        "until a connection closes", self.name, exc.strerror, self.open)
        self._pause()
        if self._retry is None:
            self._retry = self._loop.call_later(FILES_RETRY, self._resume)

    async def _connect(self, conn: socket.socket, accepted_at: float) -> None:
        assert self._loop is not None and self._make is not None
        make = self._make
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._released()

        try:
            await self._loop.connect_accepted_socket(lambda: make(release, accepted_at), conn)
        except Exception:  # noqa: BLE001 - the client vanished before its transport existed
            conn.close()
            release()

    def _released(self) -> None:
        self.open -= 1
        if self.paused and self._retry is None:
            self._resume()


__all__ = ["ADMIN_MAX_CONNECTIONS", "GuardedSite", "connection_cap", "files_reserved",
           "raise_open_file_limit"]
