"""One Redis connection for the request path, pipelined: rate-limit decisions, L2 cache reads
and writes.

Commands submitted during one event-loop iteration are written together in one write; what
comes back goes straight from the socket's protocol to hiredis, and each reply to its caller
in order (Redis answers a connection's commands in the order it received them). So a request's
rate-limit decision and its L2 lookup, submitted in the same iteration, cost one round trip,
and the round trips per request fall with concurrency (bench: tests/perf/bench_redis.py).

A Pipe talks to one Redis server: each `Command` carries the key it touches, so a client of
several servers (Redis Cluster) can keep one Pipe per node and route each command by its
key's slot without the Pipe changing.

Why not redis-py's command path: per batch it checks a connection out of the pool (a
condition, a lock, a timeout context, observability hooks), wraps every reply read in
another timeout context and releases the connection again. In the gateway benchmark that was
~25 us of CPU per request, more than everything else the limiter does. Here a request costs
one future and one slice of a write. What stays redis-py's: the connection itself comes from
RedisLink's pool (AUTH, SELECT, TLS, client name), or on a cluster a pool per node, and the
circuit breaker (RedisLink's, or the node's) and `redis.timeout` govern every command:

* the breaker is asked once per batch; an open breaker fails the batch at once;
* a command not answered within `redis.timeout` of being written fails, and with it every
  command behind it on the connection (their replies can no longer be matched), which is
  then dropped; each failed batch counts as one failure of the breaker, like a failed
  `RedisLink.call`;
* NOSCRIPT (Redis restarted, SCRIPT FLUSH): the command's `reload` (a SCRIPT LOAD) is
  written once and the command once more behind it; a second NOSCRIPT for the same command
  is an error. Any other error reply fails that command alone, with `ErrorReply`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError, RedisError

from gateway import metrics
from gateway.redisconn import CircuitBreaker, RedisLink, RedisUnavailable
from gateway.wire.redis_pipe import (
    MORE,
    StreamBridge,
    checkout,
    give_back,
    reply_reader,
    take_over,
)

log = logging.getLogger("gateway.redis")


class Command(NamedTuple):
    """One command in RESP, the key it touches (what a per-node client routes by), and for
    an EVALSHA the SCRIPT LOAD that makes it runnable again after NOSCRIPT."""

    wire: bytes
    key: str = ""
    reload: bytes | None = None


Batch = list[tuple[Command, "asyncio.Future[Any]"]]
# (caller or None for our own SCRIPT LOAD, command, deadline, already resent once)
Sent = tuple["asyncio.Future[Any] | None", Command, float, bool]


def pack_command(*parts: bytes) -> bytes:
    """A command in RESP (an array of bulk strings)."""
    return b"*%d\r\n%s" % (len(parts), b"".join(bulk(p) for p in parts))


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def script_command(sha: str, keys: tuple[str, ...], args: tuple[bytes, ...],
                   reload: bytes) -> Command:
    """An EVALSHA of a script with few arguments (the rate limiter packs its own)."""
    parts = [b"EVALSHA", sha.encode(), b"%d" % len(keys),
             *(k.encode("utf-8", "surrogateescape") for k in keys), *args]
    return Command(pack_command(*parts), keys[0] if keys else "", reload)


def load_command(source: str) -> bytes:
    return pack_command(b"SCRIPT", b"LOAD", source.encode())


class ErrorReply(RedisUnavailable):
    """Redis answered this one command with an error (the other commands of its batch are
    not affected); `error` is redis-py's exception for it, from which a cluster client reads
    MOVED, ASK and TRYAGAIN."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"Redis error: {error}")
        self.error = error


class Pipe:
    """`pool` and `breaker` default to RedisLink's; a cluster client gives each node's pipe
    a pool and a breaker of its own, so one dead master fails only its own slots."""

    def __init__(self, link: RedisLink, pool: Any = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.link = link
        self.pool = pool if pool is not None else link.client.connection_pool
        self.breaker = breaker if breaker is not None else link.breaker
        self.timeout = link.settings.timeout
        self._waiting: Batch = []  # submitted during this loop iteration
        self._connecting: list[Batch] = []  # flushed while the connection is being made
        self._sent: deque[Sent] = deque()
        self._conn: Any = None
        self._writer: asyncio.StreamWriter | None = None
        # The loop the connection lives on, kept with it: on Python 3.11 every
        # get_running_loop() is a getpid system call, and submit runs once per request.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reloading: set[bytes] = set()  # SCRIPT LOADs on the wire, not yet answered
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, command: Command) -> asyncio.Future[Any]:
        """The future of `command`'s reply; RedisUnavailable if Redis cannot answer it."""
        loop = self._loop if self._writer is not None else asyncio.get_running_loop()
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((command, future))
        return future

    async def close(self) -> None:
        self._drop()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ writing
    def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        if not self.breaker.allow():
            _fail([f for _, f in batch], "Redis circuit breaker is open")
            return
        if self._writer is not None:
            self._write(batch)
            return
        self._connecting.append(batch)
        if len(self._connecting) == 1:
            self._spawn(self._connect())

    def _write(self, batch: Batch) -> None:
        assert self._writer is not None and self._loop is not None
        loop = self._loop
        deadline = loop.time() + self.timeout
        sent = self._sent
        for command, future in batch:
            sent.append((future, command, deadline, False))
        self._writer.write(b"".join([command.wire for command, _ in batch]))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def _resend(self, future: asyncio.Future[Any], command: Command) -> None:
        assert self._writer is not None and command.reload is not None
        deadline = asyncio.get_running_loop().time() + self.timeout
        if command.reload not in self._reloading:  # replies to earlier commands still coming
            self._reloading.add(command.reload)
            self._sent.append((None, Command(command.reload), deadline, True))
            self._writer.write(command.reload)
        self._sent.append((future, command, deadline, True))
        self._writer.write(command.wire)

    async def _connect(self) -> None:
        """Borrow the pipe's connection; whatever goes wrong meanwhile (refused, AUTH
        failed, no answer, a redis-py that does not fit) fails the batches waiting for it
        at once, so the stage answers them per failure_mode within redis.timeout."""
        pool = self.pool
        conn: Any = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await checkout(pool)
            self._writer = take_over(conn, _Replies(self, conn))
            self._loop = asyncio.get_running_loop()
        except BaseException as exc:
            self._connect_failed(exc)
            if conn is not None:
                self._spawn(give_back(pool, conn))
            if not isinstance(exc, Exception):
                raise  # cancelled (the pipe is closing): its waiters are answered all the same
            return
        self._conn = conn
        batches, self._connecting = self._connecting, []
        for batch in batches:
            self._write(batch)

    def _connect_failed(self, exc: BaseException) -> None:
        batches, self._connecting = self._connecting, []
        why = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (RedisError, OSError, TimeoutError, asyncio.CancelledError)):
            # Not a Redis or network trouble: most likely a redis-py release whose
            # connection internals differ (gateway/wire/redis_pipe.py). Said once per
            # attempt; the breaker spaces attempts out.
            log.error("the pipelined connection to Redis failed: %s", why)
        _fail([f for batch in batches for _, f in batch], why)
        self._failed(len(batches))

    # ------------------------------------------------------------------ reading
    def received(self, conn: Any, parser: Any, data: bytes) -> None:
        if self._conn is not conn:
            return  # a dropped connection's late bytes
        try:
            parser.feed(data)
            reply = parser.gets()
            if reply is MORE:
                return
            while reply is not MORE:
                self._deliver(reply)
                reply = parser.gets()
        # IndexError: a reply nobody asked for. Anything else, too, ends the connection:
        # its commands could only wait for their deadline.
        except Exception as exc:  # noqa: BLE001
            self._break(f"{type(exc).__name__}: {exc}")
            return
        self.breaker.success()

    def lost(self, conn: Any) -> None:
        if self._conn is conn:
            self._break("ConnectionError: Redis closed the connection")

    def _deliver(self, reply: Any) -> None:
        future, command, _, resent = self._sent.popleft()
        if future is None:  # the reply to our SCRIPT LOAD
            self._reloading.discard(command.wire)
        elif future.done():  # the client went away meanwhile
            pass
        elif isinstance(reply, NoScriptError) and not resent and command.reload is not None:
            self._resend(future, command)
        elif isinstance(reply, Exception):
            future.set_exception(ErrorReply(reply))
            future.exception()  # marked retrieved: see _fail
        else:
            future.set_result(reply)

    # ------------------------------------------------------------------ trouble
    def _expire(self) -> None:
        self._timer = None
        if not self._sent:
            return
        loop = asyncio.get_running_loop()
        deadline = self._sent[0][2]
        if deadline > loop.time():  # the batch this timer was set for has been answered
            self._timer = loop.call_at(deadline, self._expire)
            return
        self._break("TimeoutError: no reply within redis.timeout")

    def _break(self, why: str) -> None:
        """Fail everything written on the connection and drop it: replies can no longer be
        matched to their commands."""
        sent, self._sent = self._sent, deque()
        _fail([future for future, *_ in sent if future is not None], why)
        self._failed(len({deadline for future, _, deadline, _ in sent if future is not None}))
        self._drop()

    def _failed(self, batches: int) -> None:
        for _ in range(batches):
            self.breaker.failure()
            metrics.REDIS_ERRORS.inc()

    def _drop(self) -> None:
        conn, self._conn, self._writer = self._conn, None, None
        self._reloading = set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn is not None:
            self._spawn(give_back(self.pool, conn))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._tasks.discard)
        return task


class _Replies(StreamBridge):
    """The pipe's connection's receiving end: bytes to the pipe's parser as they arrive."""

    def __init__(self, pipe: Pipe, conn: Any) -> None:
        self.pipe, self.conn, self.parser = pipe, conn, reply_reader()

    def data_received(self, data: bytes) -> None:
        self.pipe.received(self.conn, self.parser, data)

    def eof_received(self) -> bool | None:
        self.pipe.lost(self.conn)
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.lost(self.conn)
        super().connection_lost(exc)


def _fail(futures: list[asyncio.Future[Any]], why: str) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(RedisUnavailable(why))
            # Marked retrieved (whoever awaits it still gets it): a read asked ahead may
            # never be awaited, its request refused meanwhile, and the pipe has counted
            # the failure already. Here it costs nothing while Redis answers; a done
            # callback on every future cost each L2 lookup a loop step.
            future.exception()
