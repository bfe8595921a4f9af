"""The one Redis connection pool every stage shares, with a deadline and a circuit breaker.

Every call is bounded by `redis.timeout`: a slow or hung Redis never holds a request longer.
After `FAILURES` failures in a row the breaker opens and calls fail at once for `COOLDOWN`
seconds, so no request pays the timeout while Redis is down; then one call is let through to
probe, and a success closes the breaker again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway import metrics
from gateway.config.model import RedisSettings

T = TypeVar("T")

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


class RedisLink:
    """The shared client. `call` runs one coroutine against Redis under the deadline."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        timeout = settings.timeout
        if settings.cluster:
            self.client: Any = aioredis.RedisCluster.from_url(
                settings.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                max_connections=settings.max_connections,
            )
        else:
            # A blocking pool waits (up to the deadline) for a free connection instead of
            # raising MaxConnectionsError under a burst.
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.url, max_connections=settings.max_connections, timeout=timeout,
                socket_timeout=timeout, socket_connect_timeout=timeout,
            )
            self.client = aioredis.Redis(connection_pool=pool)
        self.breaker = CircuitBreaker()

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise RedisUnavailable("Redis circuit breaker is open")
        try:
            async with asyncio.timeout(self.settings.timeout):
                result = await operation()
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.failure()
            metrics.REDIS_ERRORS.inc()
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self.breaker.success()
        return result

    async def ping(self) -> bool:
        try:
            await self.call(self.client.ping)
            return True
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        await self.client.aclose()
