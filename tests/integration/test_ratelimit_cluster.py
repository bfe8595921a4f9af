"""Rate limits on a real Redis Cluster: exact under real concurrency (several stores, each
with its own connection to every master), all-or-nothing across slots, sharded hot rules,
and load spread over the masters."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis

from gateway.config.model import Algorithm, RateLimitRule, RedisSettings, Scope
from gateway.context import RequestContext
from gateway.ratelimit.cluster_store import ClusterStore, slot_groups
from gateway.ratelimit.plan import RoutePlan
from gateway.ratelimit.rules import Check, make_check, rule_keys
from gateway.redisconn import RedisLink, RedisUnavailable
from gateway.redisslots import key_slot
from tests.harness import Upstream, base_config, client_session, free_port
from tests.rediscluster import RedisCluster, redis_cli_binary

STORES = 4  # like four sidecars: four connections to every master, interleaving freely
CONCURRENT = 1000
ALL = list(Algorithm)


@contextlib.asynccontextmanager
async def cluster_stores(cluster: RedisCluster, n: int = STORES
                         ) -> AsyncIterator[list[ClusterStore]]:
    links = [RedisLink(RedisSettings(url=cluster.url, cluster=True, timeout=5.0))
             for _ in range(n)]
    stores = [ClusterStore(link) for link in links]
    try:
        yield stores
    finally:
        for store, link in zip(stores, links, strict=True):
            await store.close()
            await link.close()


def rule(name: str, algorithm: Algorithm, scope: str, limit: int, shards: int = 1
         ) -> RateLimitRule:
    # A leaky bucket admits burst + 1 at once: burst limit - 1 lets a whole window in.
    burst = limit - 1 if algorithm is Algorithm.LEAKY_BUCKET else 0
    return RateLimitRule(name, algorithm, Scope(scope), limit, 3600.0, burst, shards=shards)  # type: ignore[arg-type]


async def remaining(store: ClusterStore, check: Check) -> int:
    return (await store.decide([check._replace(cost=0)], commit=False)).results[0].remaining


@pytest.mark.parametrize("algorithm", ALL)
async def test_exactly_limit_admitted_of_1000_concurrent_requests(
        redis_cluster: RedisCluster, algorithm: Algorithm) -> None:
    user = make_check(rule("per_user", algorithm, "user", 50), "gw:", "u1", None, 1)
    async with cluster_stores(redis_cluster) as stores:
        decisions = await asyncio.gather(*(stores[i % STORES].decide([user])
                                           for i in range(CONCURRENT)))
    assert sum(d.admitted for d in decisions) == 50


@pytest.mark.parametrize("algorithm", ALL)
async def test_rules_on_two_slots_never_over_admit_and_refusals_consume_nothing(
        redis_cluster: RedisCluster, algorithm: Algorithm) -> None:
    """A global rule and a per-user rule live on different slots; 1,000 concurrent requests
    of 40 users: neither limit is passed, and what each counter holds is exactly what was
    admitted, so the refused requests' reservations all came back."""
    everyone = rule("everyone", algorithm, "global", 50)
    per_user = rule("per_user", algorithm, "user", 2)
    users = [f"u{n}" for n in range(40)]
    rng = random.Random(7)
    picks = [rng.choice(users) for _ in range(CONCURRENT)]
    glob = make_check(everyone, "gw:", "*", None, 1)
    checks = {u: [glob, make_check(per_user, "gw:", u, None, 1)] for u in users}
    assert all(len(slot_groups(c)) == 2 for c in checks.values())
    async with cluster_stores(redis_cluster) as stores:
        decisions = await asyncio.gather(*(stores[i % STORES].decide(checks[u])
                                           for i, u in enumerate(picks)))
        admitted = Counter(u for u, d in zip(picks, decisions, strict=True) if d.admitted)
        assert 0 < sum(admitted.values()) <= 50
        assert max(admitted.values()) <= 2
        assert await remaining(stores[0], glob) == 50 - sum(admitted.values())
        for u in users:
            assert await remaining(stores[0], checks[u][1]) == 2 - admitted[u], u


@pytest.mark.parametrize("algorithm", ALL)
async def test_a_request_refused_on_one_slot_gives_back_what_the_other_reserved(
        redis_cluster: RedisCluster, algorithm: Algorithm) -> None:
    glob = make_check(rule("everyone", algorithm, "global", 10), "gw:", "*", None, 1)
    user = make_check(rule("per_user", algorithm, "user", 1), "gw:", "u1", None, 1)
    async with cluster_stores(redis_cluster, 1) as (store,):
        assert (await store.decide([glob, user])).admitted
        for _ in range(3):  # the user rule refuses: the global reservation comes back
            decision = await store.decide([glob, user])
            assert not decision.admitted and decision.results[0].allowed
        assert await remaining(store, glob) == 9
        others = [make_check(rule("per_user", algorithm, "user", 1), "gw:", f"v{n}", None, 1)
                  for n in range(9)]
        assert all([(await store.decide([glob, o])).admitted for o in others])
        late = make_check(rule("per_user", algorithm, "user", 1), "gw:", "late", None, 1)
        decision = await store.decide([glob, late])  # now the global rule refuses
        assert not decision.admitted and decision.results[1].allowed
        assert await remaining(store, late) == 1


@pytest.mark.parametrize("algorithm", ALL)
async def test_a_sharded_global_rule_admits_exactly_its_limit_from_shards_on_every_master(
        redis_cluster: RedisCluster, algorithm: Algorithm) -> None:
    plan = RoutePlan((rule("everyone", algorithm, "global", 40, shards=8),), 1, "gw:")
    ctx = RequestContext("192.0.2.1")
    prepared = [plan.prepare(ctx) for _ in range(CONCURRENT)]
    keys = {p.checks[0].keys[0] for p in prepared if p is not None}
    assert len(keys) == 8 and len({key_slot(k) for k in keys}) == 8
    assert {redis_cluster.node_for_key(k).port for k in keys} == \
        {node.port for node in redis_cluster.masters}
    async with cluster_stores(redis_cluster) as stores:
        decisions = await asyncio.gather(*(stores[i % STORES].decide_prepared(p)
                                           for i, p in enumerate(prepared) if p is not None))
    assert sum(d.admitted for d in decisions) == 40


async def test_a_thousand_users_spread_keys_and_commands_over_the_masters(
        redis_cluster: RedisCluster) -> None:
    per_user = rule("per_user", Algorithm.SLIDING_WINDOW, "user", 100)
    per_tenant = rule("per_tenant", Algorithm.TOKEN_BUCKET, "tenant", 1000)
    for node in redis_cluster.masters:
        node.command("CONFIG", "RESETSTAT")
    async with cluster_stores(redis_cluster, 1) as (store,):
        for batch in range(10):
            await asyncio.gather(*(
                store.decide([make_check(per_user, "gw:", f"user-{n}", None, 1),
                              make_check(per_tenant, "gw:", f"tenant-{n % 50}", None, 1)])
                for n in range(batch * 100, batch * 100 + 100)))
    masters = redis_cluster.masters
    keys = [int(str(node.command("DBSIZE"))) for node in masters]
    calls = [evalsha_calls(node.info("commandstats")) for node in masters]
    assert sum(keys) == 1000 + 50 and sum(calls) >= 2 * 1000
    assert max(keys) <= 0.45 * sum(keys), keys
    assert max(calls) <= 0.45 * sum(calls), calls


def evalsha_calls(stats: dict[str, Any]) -> int:
    return sum(int(stat["calls"]) for name, stat in stats.items()
               if name in ("cmdstat_evalsha", "cmdstat_eval"))


# ---------------------------------------------------------------- through the gateway

def gateway_config(upstream: Upstream, cluster: RedisCluster, limit: int,
                   failure_mode: str = "closed", timeout: str = "1s") -> dict[str, Any]:
    """`timeout`: a second by default, so that no call to a healthy node (the first opens
    its connection) turns into failure_mode on a busy machine; a killed node refuses at
    once whatever the deadline."""
    # A fixed window (its counters are read back below) that no test outlives: one of an
    # hour restarts at each whole hour of the clock, which may fall mid-test.
    rules = {"per_user": {"algorithm": "fixed_window", "scope": "user", "limit": limit,
                          "window": "3650d"}}
    config = base_config(upstream.url, rate_limits=rules, redis={
        "url": cluster.url, "cluster": True, "key_prefix": "gwtest:", "timeout": timeout,
        "failure_mode": failure_mode, "max_connections_per_node": 2})
    config["routes"][0]["rate_limits"] = ["per_user"]
    return config


def users_on(cluster: RedisCluster, port: int, n: int, prefix: str = "u") -> list[str]:
    """n user ids whose rate-limit key lives on the master at `port`."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        user = f"{prefix}{i}"
        key = rule_keys("gwtest:", "per_user", Algorithm.FIXED_WINDOW, user)[0]
        if cluster.node_for_key(key).port == port:
            out.append(user)
        i += 1
    return out


async def hit(session: aiohttp.ClientSession, url: str, user: str) -> int:
    async with session.get(f"{url}/x", headers={"X-User-Id": user}) as r:
        await r.read()
        return r.status


async def steady(url: str, users: list[str], stop: asyncio.Event, seen: list[int]) -> None:
    async with client_session() as s:
        n = 0
        while not stop.is_set():
            seen.append(await hit(s, url, users[n % len(users)]))
            n += 1
            await asyncio.sleep(0.005)


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_killed_master_gives_failure_mode_then_its_replica_decides_exactly(
        redis_cluster_factory: Callable[[], RedisCluster], upstream: Upstream,
        gateway_factory: Callable[..., Any]) -> None:
    cluster = redis_cluster_factory()
    victim = cluster.masters[0]
    users = users_on(cluster, victim.port, 60)
    gw = await gateway_factory(gateway_config(upstream, cluster, limit=1000))
    stop, seen = asyncio.Event(), list[int]()
    runner = asyncio.create_task(steady(gw.url, users, stop, seen))
    await wait_until(lambda: len(seen) >= 20)
    victim.kill()
    await wait_until(lambda: 503 in seen)  # failure_mode closed while nobody serves the slots
    mark = seen.index(503)
    await wait_until(lambda: 200 in seen[mark:])  # the replica took over; the gateway followed
    stop.set()
    await runner
    assert set(seen) == {200, 503}
    # Exact again on the promoted replica: a fresh user gets exactly the limit.
    fresh = users_on(cluster, cluster.node_for_key(
        rule_keys("gwtest:", "per_user", Algorithm.FIXED_WINDOW, users[0])[0]).port, 1, "f")[0]
    async with client_session() as s:
        codes = [await hit(s, gw.url, fresh) for _ in range(1003)]
    assert Counter(codes) == {200: 1000, 429: 3}


async def test_slots_resharded_under_load_are_followed_without_an_error(
        redis_cluster_factory: Callable[[], RedisCluster], upstream: Upstream,
        gateway_factory: Callable[..., Any]) -> None:
    cluster = redis_cluster_factory()
    source, target = cluster.masters[:2]
    users = users_on(cluster, source.port, 200)
    # A generous deadline: a redirection must not fail, but this shared machine may stall.
    gw = await gateway_factory(gateway_config(upstream, cluster, limit=100_000, timeout="3s"))
    stop, seen = asyncio.Event(), list[int]()
    runners = [asyncio.create_task(steady(gw.url, users[i::4], stop, seen)) for i in range(4)]
    await wait_until(lambda: len(seen) >= 40)
    moved = await asyncio.to_thread(subprocess.run, [
        redis_cli_binary(), "--cluster", "reshard", source.address,
        "--cluster-from", str(source.command("CLUSTER", "MYID")),
        "--cluster-to", str(target.command("CLUSTER", "MYID")),
        "--cluster-slots", "800", "--cluster-yes"],
        capture_output=True, timeout=120, check=True)
    assert b"Moving slot" in moved.stdout
    cluster.wait_ok()
    mark = len(seen)
    await wait_until(lambda: len(seen) >= mark + 40)
    stop.set()
    await asyncio.gather(*runners)
    assert set(seen) == {200}
    owners = {cluster.node_for_key(rule_keys("gwtest:", "per_user", Algorithm.FIXED_WINDOW,
                                             u)[0]).port for u in users}
    assert target.port in owners  # some of the users' keys did move while they were counted
    counted = sum(fixed_window_used(cluster.node_for_key(k).port, k)
                  for k in (rule_keys("gwtest:", "per_user", Algorithm.FIXED_WINDOW, u)[0]
                            for u in users))
    assert counted == len(seen)  # every admitted request counted once, none lost or doubled


def fixed_window_used(port: int, key: str) -> int:
    """The units a fixed window's key counts (lua/ratelimit.lua: window, used as doubles)."""
    client = redis.Redis(port=port)
    try:
        value = client.get(key)
    finally:
        client.close()
    return 0 if value is None else int(struct.unpack("<dd", value)[1])


async def test_admin_state_and_reset_of_a_sharded_rule_cover_every_shard(
        redis_cluster: RedisCluster, upstream: Upstream,
        gateway_factory: Callable[..., Any]) -> None:
    config = gateway_config(upstream, redis_cluster, limit=1000)
    config["rate_limits"]["everyone"] = {"algorithm": "sliding_window", "scope": "global",
                                         "limit": 16, "window": "1h", "shards": 4}
    config["routes"][0]["rate_limits"] = ["everyone"]
    gw = await gateway_factory(config)
    limiter = gw.process.pipeline.runtime.limiter
    async with client_session() as s:
        assert [await hit(s, gw.url, f"u{n}") for n in range(6)] == [200] * 6
    state = await limiter.state("everyone", "")
    assert (state["remaining"], state["quota"], state["store"]) == (10, 16, "redis")
    await limiter.reset("everyone", "")
    assert (await limiter.state("everyone", ""))["remaining"] == 16


async def test_a_cluster_nobody_answers_for_fails_every_decision_as_unavailable() -> None:
    link = RedisLink(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", cluster=True,
                                   timeout=0.5))
    store = ClusterStore(link)
    check = make_check(rule("per_user", Algorithm.FIXED_WINDOW, "user", 5), "gw:", "u1", None, 1)
    try:
        outcomes = await asyncio.gather(*(store.decide([check]) for _ in range(50)),
                                        return_exceptions=True)
        assert all(isinstance(o, RedisUnavailable) for o in outcomes)
        assert "no Redis Cluster node gave its slot map" in str(outcomes[0])
    finally:
        await store.close()
        await link.close()
