"""Whatever goes wrong while the rate-limit connection to Redis is being made, the requests
waiting for it are answered per failure_mode within redis.timeout, and so is every request
after them: an AUTH error (real redis-server with a password), a server that accepts and
closes, a server that never answers, and an exception redis-py does not usually raise
(redis-py before 5.3 raised TypeError from the pool's get_connection)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from tests.harness import RedisServer, Upstream, base_config, client_session, free_port

TIMEOUT = 0.3  # redis.timeout of these tests, seconds
# A hang guard only: each request must be answered well before this (the breaker spaces
# connection attempts; none may wait longer than redis.timeout).
GUARD = TIMEOUT + 5.0
EXPECTED = {"open": 200, "closed": 503, "local": 200}


def config(upstream: Upstream, url: str, failure_mode: str) -> dict[str, Any]:
    rules = {"per_user": {"algorithm": "token_bucket", "scope": "user", "limit": 100,
                          "window": "1m"}}
    cfg = base_config(upstream.url, rate_limits=rules, redis={
        "url": url, "key_prefix": "gwtest:", "timeout": f"{int(TIMEOUT * 1000)}ms",
        "failure_mode": failure_mode})
    cfg["routes"][0]["rate_limits"] = ["per_user"]
    return cfg


@contextlib.asynccontextmanager
async def raw_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]
                     ) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that treats every connection with `handle`; its URL."""
    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield f"redis://:secret@127.0.0.1:{port}/0"  # a password: redis-py sends AUTH first
    finally:
        server.close()
        await server.wait_closed()


async def accept_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass  # read everything, answer nothing
    writer.close()


async def answered_codes(url: str) -> list[int]:
    """Three requests at once (one connection attempt serves them), then two more, each
    within the guard."""
    async def one(user: str) -> int:
        async with s.get(f"{url}/x", headers={"X-User-Id": user}) as r:
            await r.read()
            return r.status

    async with client_session() as s:
        async with asyncio.timeout(GUARD):
            codes = list(await asyncio.gather(*(one(f"u{i}") for i in range(3))))
        for i in range(2):
            async with asyncio.timeout(GUARD):
                codes.append(await one(f"v{i}"))
    return codes


@pytest.mark.parametrize("failure_mode", ["open", "closed"])
@pytest.mark.parametrize("trouble", [accept_and_close, never_answer])
async def test_a_misbehaving_server_answers_waiting_requests_per_failure_mode(
        gateway_factory: Callable[..., Any], upstream: Upstream, failure_mode: str,
        trouble: Callable[..., Any]) -> None:
    async with raw_server(trouble) as redis_url:
        gw = await gateway_factory(config(upstream, redis_url, failure_mode))
        assert await answered_codes(gw.url) == [EXPECTED[failure_mode]] * 5


@pytest.mark.parametrize("failure_mode", ["open", "closed"])
async def test_an_auth_error_answers_waiting_requests_per_failure_mode(
        gateway_factory: Callable[..., Any], upstream: Upstream, redis_server: RedisServer,
        failure_mode: str) -> None:
    redis_server.cli("CONFIG", "SET", "requirepass", "right")
    url = f"redis://:wrong@127.0.0.1:{redis_server.port}/0"
    gw = await gateway_factory(config(upstream, url, failure_mode))
    assert await answered_codes(gw.url) == [EXPECTED[failure_mode]] * 5


@pytest.mark.parametrize("failure_mode", ["open", "closed", "local"])
async def test_an_unexpected_exception_while_connecting_answers_per_failure_mode(
        gateway_factory: Callable[..., Any], upstream: Upstream, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch, failure_mode: str) -> None:
    async def old_signature(self: Any) -> Any:
        raise TypeError("get_connection() missing 1 required positional argument: "
                        "'command_name'")

    # Only the pool's checkout breaks: the connection works for everything else.
    monkeypatch.setattr(redis.asyncio.BlockingConnectionPool, "get_connection", old_signature)
    monkeypatch.setattr("gateway.wire.redis_pipe._NAMED", {})
    gw = await gateway_factory(config(upstream, redis_server.url, failure_mode))
    assert await answered_codes(gw.url) == [EXPECTED[failure_mode]] * 5
