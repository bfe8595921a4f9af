"""The one Redis connection pool every stage shares, with a deadline and a circuit breaker.

Every call is bounded by `redis.timeout`: a slow or hung Redis never holds a request longer.
After `FAILURES` failures in a row the breaker opens and calls fail at once for `COOLDOWN`
seconds, so no request pays the timeout while Redis is down; then one call is let through to
probe, and a success closes the breaker again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from gateway import metrics
from gateway.config.model import RedisSettings
from gateway.wire.redis_cluster import reseed, startup_nodes

if TYPE_CHECKING:
    from gateway.redispipe import Pipe

T = TypeVar("T")
log = logging.getLogger("gateway.redis")

FAILURES = 3
COOLDOWN = 1.0


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused, or the breaker is open."""


class CircuitBreaker:
    def __init__(self, failures: int = FAILURES, cooldown: float = COOLDOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    @property
    def refusing(self) -> bool:
        """Open and not yet due for a probe: a caller may skip Redis without asking. A caller
        that skipped on `is_open` instead would never send the probe that closes it."""
        return self.opened_at is not None and (
            self._probing or self.clock() - self.opened_at < self.cooldown)

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at >= self.cooldown and not self._probing:
            self._probing = True  # exactly one probe while half-open
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.failures >= self.threshold:
            self.opened_at = self.clock()

    def abandoned(self) -> None:
        """The call let through was cancelled before it could tell: let another probe."""
        self._probing = False


class RedisLink:
    """The shared client. `call` runs one coroutine against Redis under the deadline.

    With `redis.cluster`, the client is redis-py's RedisCluster: it is given one node and
    discovers the others, sends each command to the master of its key's slot and follows
    MOVED and ASK. Its nodes raise MaxConnectionsError instead of waiting when their
    connections are all busy, so calls wait at a gate of `max_connections_per_node` instead:
    an operation holds at most one connection per node (a command one, a pipeline one per
    node it spans), so no node ever sees more than that many connections of this process
    from the shared client, however many requests are in flight. The wait counts against
    `redis.timeout`, as a single Redis's blocking pool does.
    """

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        timeout = settings.timeout
        self._gate: asyncio.Semaphore | None = None
        if settings.cluster:
            # reinitialize_steps=0: each MOVED patches its slot in the client's map. By
            # default every 5th MOVED reloads the whole map by closing every connection of
            # the client, those in use by concurrent calls too, which then fail (redis-py
            # 8.1 under a resharding: 11 failed calls per 3,000 slots moved; none with 0).
            # A lost node still reloads the map.
            self.client: Any = aioredis.RedisCluster.from_url(
                settings.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                max_connections=settings.max_connections_per_node, reinitialize_steps=0,
            )
            self._gate = asyncio.Semaphore(settings.max_connections_per_node)
        else:
            # A blocking pool waits (up to the deadline) for a free connection instead of
            # raising MaxConnectionsError under a burst.
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.url, max_connections=settings.max_connections, timeout=timeout,
                socket_timeout=timeout, socket_connect_timeout=timeout,
            )
            self.client = aioredis.Redis(connection_pool=pool)
        self.breaker = CircuitBreaker()
        self._pipe: Pipe | None = None
        # The nodes a cluster client was configured with, put back when it has lost them all.
        self._seeds: dict[str, Any] = startup_nodes(self.client) if settings.cluster else {}

    @property
    def pipe(self) -> Pipe | None:
        """The pipelined connection every request-path command shares (the rate limiter's
        decisions, the cache's L2 reads and writes), so what one request needs of Redis
        leaves in one write; None for a cluster client, which has no single connection."""
        if self._pipe is None and not self.settings.cluster:
            from gateway.redispipe import Pipe  # built on this module: imported when first used

            self._pipe = Pipe(self)
        return self._pipe

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise RedisUnavailable("Redis circuit breaker is open")
        try:
            async with asyncio.timeout(self.settings.timeout):
                if self._gate is None:
                    result = await operation()
                else:
                    async with self._gate:
                        result = await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed()
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError:
            self.breaker.abandoned()  # a cancelled probe would otherwise hold it open forever
            raise
        except RedisClusterException as exc:
            # No node left to reload the slot map from (gateway/wire/redis_cluster.py): the
            # known nodes are put back, so a later call (the breaker's probe) finds one.
            if self.settings.cluster and reseed(self.client, self._seeds):
                log.warning("Redis Cluster: no reachable node left to the client; its known "
                            "nodes are tried again")
            self._failed()
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # Not Redis or network trouble: a redis-py release that does not fit (one raised
            # TypeError while connecting) or a bug. Its callers still answer per
            # failure_mode instead of failing the request, or leaving a batch unanswered.
            log.error("a Redis call failed unexpectedly: %s: %s", type(exc).__name__, exc,
                      exc_info=exc)
            self._failed()
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self.breaker.success()
        return result

    async def publish(self, channel: str, payload: bytes) -> None:
        """PUBLISH under the deadline. On a cluster any node will do (the bus carries the
        message to every node's subscribers); redis-py 5.0's asyncio cluster client has no
        publish() and routes a keyless command only when told where."""
        if self.settings.cluster:
            await self.call(lambda: self.client.execute_command(
                "PUBLISH", channel, payload, target_nodes=aioredis.RedisCluster.RANDOM))
        else:
            await self.call(lambda: self.client.publish(channel, payload))

    def _failed(self) -> None:
        self.breaker.failure()
        metrics.REDIS_ERRORS.inc()

    async def ping(self) -> bool:
        try:
            await self.call(self.client.ping)
            return True
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()
        await self.client.aclose()


class Subscription:
    """One pub/sub channel followed for the life of the process, on a connection of its own.

    A subscribed connection can do nothing else, and it must wait far longer than
    `redis.timeout`, so it is not taken from the shared pool. The loop (re)connects with
    back-off; after each SUBSCRIBE it awaits `on_connect(client)` before handing any message
    to `on_message`, so whatever the caller re-reads there (stored state) cannot miss a change
    published meanwhile. An idle connection is pinged every PING_EVERY seconds and declared
    dead after DEAD_AFTER seconds without a word (a Redis that hangs or a path that drops
    packets never closes the socket); `on_disconnect()` is called on every loss.

    On a cluster the channel is a classic one: a PUBLISH on any node reaches the subscribers
    of every node over the cluster bus, so the subscription may listen on any node, replicas
    included. It starts on the configured node and, when that connection is lost, moves on to
    the next node the shared client knows, so the death of the node it listens on costs one
    reconnection. `on_connect` is then given the shared cluster client, since the state it
    re-reads may live on any master.
    """

    RETRY_MAX = 1.0  # seconds between reconnection attempts, at most
    PING_EVERY = 5.0
    DEAD_AFTER = 12.0

    def __init__(self, link: RedisLink, channel: str,
                 on_message: Callable[[Any], None],
                 on_connect: Callable[[Any], Awaitable[None]],
                 on_disconnect: Callable[[], None] = lambda: None, name: str = "") -> None:
        self.link = link
        self.settings = link.settings
        self.channel = channel
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.name = name or channel
        self.listening_on: str | None = None  # host:port of the node followed, once subscribed
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._attempt = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name=self.name)

    async def close(self) -> None:
        # redis-py's get_message may swallow a cancellation into its own read timeout, so the
        # loop also checks a flag (it wakes at least once a second).
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=3.0)
            self._task = None

    def _url(self) -> str:
        """The URL of the node to listen on: the configured one, or on a cluster the next of
        the nodes known, moving on after each failed attempt."""
        if not self.settings.cluster:
            return self.settings.url
        nodes = node_addresses(self.settings.url, [
            (node.host, int(node.port)) for node in self.link.client.get_nodes()])
        host, port = nodes[self._attempt % len(nodes)]
        return with_node(self.settings.url, host, port)

    async def _follow(self) -> None:
        delay = 0.1
        while not self._stopping:
            url = self._url()
            client = aioredis.Redis.from_url(
                url, socket_connect_timeout=max(self.settings.timeout, 1.0))
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self.on_connect(self.link.client if self.settings.cluster else client)
                self.listening_on = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
                delay = 0.1
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever broke, reconnect
                log.warning("%s: lost the Redis subscription (%s: %s); reconnecting",
                            self.name, type(exc).__name__, exc)
                self.listening_on = None
                self._attempt += 1
                self.on_disconnect()
            finally:
                await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
                await _quietly(client.aclose())
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX)

    async def _listen(self, pubsub: Any) -> None:
        last_heard = last_ping = time.monotonic()
        while not self._stopping:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                if message.get("type") == "message":
                    self.on_message(message.get("data"))
                continue
            if now - last_heard > self.DEAD_AFTER:
                raise ConnectionError(f"no reply from Redis for {self.DEAD_AFTER:.0f}s")
            if now - last_ping > self.PING_EVERY:
                last_ping = now
                await pubsub.ping()  # the PONG arrives as a message and refreshes last_heard


async def _quietly(awaitable: Awaitable[Any]) -> None:
    """Close a possibly broken connection: a connection cut mid-read can hang its own close."""
    try:
        async with asyncio.timeout(1.0):
            await awaitable
    except Exception as exc:  # noqa: BLE001 - closing a broken connection may fail any way
        log.debug("closing a Redis subscription: %s", exc)


def node_addresses(url: str, known: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The configured node first, then every other node known, each once, in a stable order
    (so successive attempts walk the whole cluster)."""
    parts = urllib.parse.urlsplit(url)
    first = (parts.hostname or "127.0.0.1", parts.port or 6379)
    return [first, *sorted(set(known) - {first})]


def with_node(url: str, host: str, port: int) -> str:
    """`url` aimed at another node of the cluster: same scheme, credentials and options."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    bracketed = f"[{host}]" if ":" in host else host
    netloc = f"{credentials}@{bracketed}:{port}" if credentials else f"{bracketed}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
