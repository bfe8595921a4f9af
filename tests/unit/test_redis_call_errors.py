"""RedisLink.call turns every failure of a Redis call into RedisUnavailable (so the caller
answers per failure_mode) and counts it against the circuit breaker, whatever its type."""

from __future__ import annotations

import pytest

from gateway.config.model import RedisSettings
from gateway.redisconn import RedisLink, RedisUnavailable


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(111, "refused"),  # network trouble
    TypeError("get_connection() missing 1 required positional argument: 'command_name'"),
    AttributeError("'Connection' object has no attribute '_reader'"),
])
async def test_any_exception_of_a_call_is_redis_unavailable_and_a_breaker_failure(
        error: Exception) -> None:
    link = RedisLink(RedisSettings(url="redis://127.0.0.1:9/0"))

    async def failing() -> None:
        raise error

    try:
        for _ in range(link.breaker.threshold):
            with pytest.raises(RedisUnavailable, match=type(error).__name__):
                await link.call(failing)
        assert link.breaker.is_open
    finally:
        await link.close()
