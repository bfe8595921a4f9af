"""One Redis connection reserved for rate-limit decisions, pipelined.

Commands submitted during one event-loop iteration are written together in one write; one
reader task feeds everything that comes back to hiredis and hands each reply to its caller in
order (Redis answers a connection's commands in the order it received them).

Why not redis-py's command path: per batch it checks a connection out of the pool (a
condition, a lock, a timeout context, observability hooks), wraps every reply read in
another timeout context and releases the connection again. In the gateway benchmark that was
~25 us of CPU per request, more than everything else the limiter does. Here a request costs
one future and one slice of a write. What stays redis-py's: the connection itself comes from
RedisLink's pool (AUTH, SELECT, TLS, client name), and RedisLink's circuit breaker and
`redis.timeout` govern every command:

* the breaker is asked once per batch; an open breaker fails the batch at once;
* a command not answered within `redis.timeout` of being written fails, and with it every
  command behind it on the connection (their replies can no longer be matched), which is
  then dropped; each failed batch counts as one failure of the breaker, like a failed
  `RedisLink.call`;
* NOSCRIPT (Redis restarted, SCRIPT FLUSH): `reload` (a SCRIPT LOAD) is written once and the
  command once more behind it; a second NOSCRIPT for the same command is an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from gateway import metrics
from gateway.redisconn import CircuitBreaker, RedisLink, RedisUnavailable
from gateway.wire.redis_pipe import MORE, checkout, give_back, reply_reader, streams

log = logging.getLogger("gateway.redis")

READ_SIZE = 65536

Batch = list[tuple[bytes, "asyncio.Future[Any]"]]
# (caller or None for our own SCRIPT LOAD, command, deadline, already resent once)
Sent = tuple["asyncio.Future[Any] | None", bytes, float, bool]


class ErrorReply(RedisUnavailable):
    """Redis answered the command with an error; `error` is redis-py's exception for it
    (a cluster client reads MOVED, ASK and TRYAGAIN from it)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"script error: {error}")
        self.error = error


class Pipe:
    """`pool` and `breaker` default to RedisLink's; a cluster store gives each node's pipe
    a pool and a breaker of its own, so one dead master fails only its own slots."""

    def __init__(self, link: RedisLink, reload: bytes, pool: Any = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.link = link
        self.reload = reload
        self.pool = pool if pool is not None else link.client.connection_pool
        self.breaker = breaker if breaker is not None else link.breaker
        self.timeout = link.settings.timeout
        self._waiting: Batch = []  # submitted during this loop iteration
        self._connecting: list[Batch] = []  # flushed while the connection is being made
        self._sent: deque[Sent] = deque()
        self._conn: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reloading = False  # a SCRIPT LOAD is on the wire, not yet answered
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, command: bytes) -> asyncio.Future[Any]:
        """The future of `command`'s reply; RedisUnavailable if Redis cannot answer it."""
        loop = asyncio.get_running_loop()
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
        assert self._writer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        sent = self._sent
        for command, future in batch:
            sent.append((future, command, deadline, False))
        self._writer.write(b"".join([command for command, _ in batch]))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def _resend(self, future: asyncio.Future[Any], command: bytes) -> None:
        assert self._writer is not None
        deadline = asyncio.get_running_loop().time() + self.timeout
        if not self._reloading:  # replies to commands written before it are still coming
            self._reloading = True
            self._sent.append((None, self.reload, deadline, True))
            self._writer.write(self.reload)
        self._sent.append((future, command, deadline, True))
        self._writer.write(command)

    async def _connect(self) -> None:
        """Borrow the pipe's connection; whatever goes wrong meanwhile (refused, AUTH
        failed, no answer, a redis-py that does not fit) fails the batches waiting for it
        at once, so the stage answers them per failure_mode within redis.timeout."""
        pool = self.pool
        conn: Any = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await checkout(pool)
            reader, self._writer = streams(conn)
        except BaseException as exc:
            self._connect_failed(exc)
            if conn is not None:
                self._spawn(give_back(pool, conn))
            if not isinstance(exc, Exception):
                raise  # cancelled (the pipe is closing): its waiters are answered all the same
            return
        self._conn = conn
        self._reader = self._spawn(self._read(conn, reader))
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
            log.error("the rate-limit connection to Redis failed: %s", why)
        _fail([f for batch in batches for _, f in batch], why)
        self._failed(len(batches))

    # ------------------------------------------------------------------ reading
    async def _read(self, conn: Any, stream: asyncio.StreamReader) -> None:
        parser = reply_reader()
        why = "ConnectionError: Redis closed the connection"
        try:
            while data := await stream.read(READ_SIZE):
                parser.feed(data)
                reply = parser.gets()
                if reply is MORE:
                    continue
                while reply is not MORE:
                    self._deliver(reply)
                    reply = parser.gets()
                self.breaker.success()
        # IndexError: a reply nobody asked for. Anything else, too, ends the connection:
        # with no reader, its commands would only wait for their deadline.
        except Exception as exc:  # noqa: BLE001
            why = f"{type(exc).__name__}: {exc}"
        if self._conn is conn:
            self._break(why)

    def _deliver(self, reply: Any) -> None:
        future, command, _, resent = self._sent.popleft()
        if future is None:  # the reply to our SCRIPT LOAD
            self._reloading = False
        elif future.done():  # the client went away meanwhile
            pass
        elif isinstance(reply, NoScriptError) and not resent:
            self._resend(future, command)
        elif isinstance(reply, Exception):
            future.set_exception(ErrorReply(reply))
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
        self._reloading = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if conn is not None:
            self._spawn(give_back(self.pool, conn))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._tasks.discard)
        return task


def _fail(futures: list[asyncio.Future[Any]], why: str) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(RedisUnavailable(why))
