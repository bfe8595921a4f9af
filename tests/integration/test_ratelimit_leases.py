"""Local token leases (`lease: N`, `lease_ttl`) against a real redis-server: a process takes
N units in one decision and spends the rest locally; one process stays exact, lapsed units
are never returned, and across a window edge two processes admit at most N-1 more than the
limit per process and key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from gateway.config.model import Algorithm, Config
from gateway.config.parse import parse_document
from gateway.context import RequestContext
from gateway.luascripts import load_script
from gateway.ratelimit import LocalStore, RateLimiter
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.rules import rule_keys
from gateway.redisconn import RedisLink
from tests.harness import REPO, RedisServer, base_config, reference_config_with

USER = RequestContext(client_ip="10.0.0.1", user_id="u1")


def leased_config(redis_url: str, limit: int, window: str, lease: int,
                  lease_ttl: str = "10s") -> Config:
    rules: dict[str, Any] = {"per_user": {
        "algorithm": "fixed_window", "scope": "user", "limit": limit, "window": window,
        "lease": lease, "lease_ttl": lease_ttl}}
    data = base_config("http://127.0.0.1:1", rate_limits=rules,
                       redis={"url": redis_url, "key_prefix": "ls:", "timeout": "2s"})
    data["routes"][0]["rate_limits"] = ["per_user"]
    return parse_document(data, "leases.yaml")


class Process:
    """One gateway process's limiter (its own leases) on the shared Redis."""

    def __init__(self, config: Config) -> None:
        self.link = RedisLink(config.redis)  # type: ignore[arg-type]
        self.limiter = RateLimiter(config, LocalStore(), RedisStore(self.link))
        self.route = config.routes[0]

    async def admitted(self, n: int) -> int:
        verdicts = [await self.limiter.check(self.route, USER, None, "r")  # type: ignore[arg-type]
                    for _ in range(n)]
        return sum(v.refusal is None for v in verdicts)

    async def close(self) -> None:
        await self.link.close()


def evalshas(server: RedisServer) -> int:
    client = redis.Redis(port=server.port)
    try:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    finally:
        client.close()


async def test_one_process_with_a_lease_admits_exactly_the_limit_in_fewer_decisions(
        redis_server: RedisServer) -> None:
    p = Process(leased_config(redis_server.url, limit=10, window="1h", lease=4))
    try:
        redis_server.cli("SCRIPT", "LOAD", load_script("ratelimit").source)
        assert await p.admitted(8) == 8
        assert evalshas(redis_server) == 2  # two leases of 4: 6 requests spent locally
        # 2 units left in Redis, fewer than a lease: each request then decides its own
        # cost alone (a second call), and the limit holds exactly.
        assert await p.admitted(7) == 2
    finally:
        await p.close()


async def test_lapsed_units_are_not_spent_and_not_given_back(
        redis_server: RedisServer) -> None:
    p = Process(leased_config(redis_server.url, limit=10, window="1h", lease=5,
                              lease_ttl="200ms"))
    try:
        assert await p.admitted(1) == 1  # took 5: 1 spent, 4 held
        before = evalshas(redis_server)
        assert await p.admitted(2) == 2
        assert evalshas(redis_server) == before  # spent locally
        await asyncio.sleep(0.3)  # the 2 units still held lapse
        assert await p.admitted(10) == 5  # 10 - 5 counted by the first lease
        assert evalshas(redis_server) > before
    finally:
        await p.close()


async def test_across_a_window_edge_two_processes_admit_at_most_lease_minus_one_more(
        redis_server: RedisServer) -> None:
    """A takes a lease at the end of a fixed window and spends it in the next, where Redis
    no longer counts it; B fills the next window. The next window admits limit + N-1, the
    bound, and not one more."""
    limit, lease, window = 6, 4, 2.0
    config = leased_config(redis_server.url, limit=limit, window="2s", lease=lease)
    a, b = Process(config), Process(config)
    client = redis.Redis(port=redis_server.port)
    try:
        for _ in range(3):  # a stall past the edge on this busy machine: try the next edge
            seconds, micros = client.time()
            now = seconds + micros / 1e6
            edge = (now // window + 1) * window
            if edge - now < 0.6:
                edge += window
            await asyncio.sleep(edge - now - 0.4)
            client.delete(*rule_keys("ls:", "per_user", Algorithm.FIXED_WINDOW, "u1"))
            assert await a.admitted(1) == 1  # takes the lease in the closing window
            seconds, micros = client.time()
            if seconds + micros / 1e6 >= edge:
                continue
            await asyncio.sleep(edge - (seconds + micros / 1e6) + 0.05)
            in_new_window = await b.admitted(limit + 2) + await a.admitted(lease + 2)
            assert in_new_window == limit + lease - 1
            return
        raise AssertionError("never took a lease before a window edge")
    finally:
        client.close()
        await a.close()
        await b.close()


def test_the_reference_config_with_leases_passes_gateway_check(tmp_path: Path) -> None:
    path = reference_config_with(tmp_path, "performance")
    done = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    # The reference's leased rule shares routes with rules that have none: said so.
    assert "tenant_requests.lease: route" in done.stdout + done.stderr
