"""Rate limits on a real redis-server: exactness across worker processes, one script call
per request, and every failure_mode with Redis stopped, killed or hung mid-traffic."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis

from gateway.config.model import Algorithm
from gateway.ratelimit.rules import rule_keys
from tests.harness import RedisServer, Upstream, base_config, client_session
from tests.rediscluster import RedisCluster


def redis_config(upstream: Upstream, server: RedisServer | RedisCluster,
                 rules: dict[str, dict[str, Any]], failure_mode: str = "closed",
                 timeout: str = "1s") -> dict[str, Any]:
    config = base_config(upstream.url, rate_limits=rules, redis={
        "url": server.url, "key_prefix": "gwtest:", "timeout": timeout,
        "failure_mode": failure_mode, "cluster": isinstance(server, RedisCluster)})
    config["routes"][0]["rate_limits"] = list(rules)
    return config


async def hit(session: aiohttp.ClientSession, url: str, user: str = "u1") -> int:
    async with session.get(f"{url}/x", headers={"X-User-Id": user}) as r:
        await r.read()
        return r.status


def commandstat(server: RedisServer, command: str) -> int:
    client = redis.Redis(port=server.port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.parametrize("backend", ["redis", "cluster"])
@pytest.mark.parametrize("algorithm, burst", [
    ("token_bucket", 0), ("sliding_window", 0), ("fixed_window", 0),
    # GCRA with burst 0 spaces every request (1 at once); burst limit-1 lets a full window
    # of 50 arrive at once, which is what "exactly 50" asks of it.
    ("leaky_bucket", 49),
])
async def test_exactly_limit_admitted_across_two_worker_processes(
        process_factory: Callable[..., Any], upstream: Upstream, request: pytest.FixtureRequest,
        algorithm: str, burst: int, backend: str) -> None:
    rules = {"per_user": {"algorithm": algorithm, "scope": "user", "limit": 50,
                          "window": "1h", "burst": burst}}
    server = request.getfixturevalue("redis_cluster" if backend == "cluster" else "redis_server")
    gw = process_factory(redis_config(upstream, server, rules), workers=2)
    async with client_session() as s:
        codes = Counter(await asyncio.gather(*(hit(s, gw.url) for _ in range(400))))
    assert codes == {200: 50, 429: 350}
    assert upstream.count("/x") == 50


async def test_one_script_call_per_decided_request(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_server: RedisServer) -> None:
    rules = {name: {"algorithm": alg, "scope": "user", "limit": 1000, "window": "1h"}
             for name, alg in (("a", "token_bucket"), ("b", "sliding_window"),
                               ("c", "fixed_window"))}
    gw = await gateway_factory(redis_config(upstream, redis_server, rules))
    async with client_session() as s:
        assert await hit(s, gw.url) == 200  # loads the script (NOSCRIPT once)
        redis_server.cli("CONFIG", "RESETSTAT")
        codes = await asyncio.gather(*(hit(s, gw.url, f"u{i % 7}") for i in range(120)))
        codes += [await hit(s, gw.url) for _ in range(10)]
    assert codes == [200] * 130
    assert commandstat(redis_server, "evalsha") == 130
    assert commandstat(redis_server, "eval") == 0


async def traffic(url: str, stop: asyncio.Event, seen: list[tuple[float, int]]) -> None:
    async with client_session() as s:
        while not stop.is_set():
            seen.append((time.monotonic(), await hit(s, url, "steady")))
            await asyncio.sleep(0.01)


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def start_traffic(gateway_factory: Callable[..., Any], upstream: Upstream,
                        server: RedisServer, algorithm: str, failure_mode: str
                        ) -> tuple[asyncio.Event, list[tuple[float, int]], asyncio.Task[None]]:
    """A gateway on `server` and a steady stream of requests for user 'steady'."""
    rules = {"per_user": {"algorithm": algorithm, "scope": "user", "limit": 100_000,
                          "window": "1h"}}
    gw = await gateway_factory(redis_config(upstream, server, rules, failure_mode, "150ms"))
    stop, seen = asyncio.Event(), []
    runner = asyncio.create_task(traffic(gw.url, stop, seen))
    await wait_for(lambda: len(seen) >= 5)
    return stop, seen, runner


@pytest.mark.parametrize("disrupt", ["stop", "kill", "pause"])
async def test_failure_mode_open_admits_and_recovers(
        gateway_factory: Callable[..., Any], upstream: Upstream, redis_server: RedisServer,
        disrupt: str) -> None:
    stop, seen, runner = await start_traffic(gateway_factory, upstream, redis_server,
                                             "sliding_window", "open")
    getattr(redis_server, disrupt)()
    cut = time.monotonic()
    await asyncio.sleep(1.5)
    assert all(code == 200 for _, code in seen)  # failed open: everyone admitted
    (redis_server.resume if disrupt == "pause" else redis_server.start)()
    log = rule_keys("gwtest:", "per_user", Algorithm.SLIDING_WINDOW, "steady")[0]
    counted = int(redis_server.cli("STRLEN", log))  # the log grows by an entry per admission
    await wait_for(lambda: int(redis_server.cli("STRLEN", log)) > counted)  # Redis decides again
    stop.set()
    await runner
    assert {code for _, code in seen} == {200}
    # With the breaker open, requests during the outage did not each pay the timeout.
    during = [t for t, _ in seen if cut + 0.5 < t < cut + 1.5]
    assert len(during) >= 5


async def test_failure_mode_closed_answers_503_then_recovers(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_server: RedisServer) -> None:
    stop, seen, runner = await start_traffic(gateway_factory, upstream, redis_server,
                                             "token_bucket", "closed")
    redis_server.kill()
    await wait_for(lambda: any(code == 503 for _, code in seen))
    redis_server.start()
    mark = len(seen)
    await wait_for(lambda: any(code == 200 for _, code in seen[mark:]))
    stop.set()
    await runner
    assert set(Counter(code for _, code in seen)) <= {200, 503}
    assert int(redis_server.cli("EXISTS", rule_keys("gwtest:", "per_user", Algorithm.TOKEN_BUCKET, "steady")[0])) == 1


async def test_failure_mode_local_keeps_limiting_in_process(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_server: RedisServer) -> None:
    rules = {"per_user": {"algorithm": "fixed_window", "scope": "user", "limit": 3,
                          "window": "1h"}}
    # A second: a healthy Redis must decide every call outside the pause (one decided
    # locally would split the counts); the paused calls still end at the deadline.
    gw = await gateway_factory(redis_config(upstream, redis_server, rules, "local", "1s"))
    async with client_session() as s:
        assert [await hit(s, gw.url, "a") for _ in range(4)] == [200, 200, 200, 429]
        redis_server.pause()  # hung: every call runs into the deadline until the breaker opens
        try:
            assert [await hit(s, gw.url, "b") for _ in range(4)] == [200, 200, 200, 429]
        finally:
            redis_server.resume()
        # Back on Redis (after the breaker's cool-down): a's count there was kept.
        await asyncio.sleep(1.1)
        codes = [await hit(s, gw.url, "a") for _ in range(3)]
        assert codes[-1] == 429
        assert int(redis_server.cli("EXISTS", rule_keys("gwtest:", "per_user", Algorithm.FIXED_WINDOW, "a")[0])) == 1
