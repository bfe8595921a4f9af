"""The gateway on a real Redis Cluster: connections bounded per node, cache keys spread over
the masters, purges reaching every master, pub/sub surviving the death of the node it
listens on, and a master's failover and a resharding under load unseen by clients."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from gateway.config.model import RedisSettings
from gateway.redisconn import RedisLink, RedisUnavailable
from tests.harness import InProcessGateway, Upstream, client_session
from tests.integration.test_cache import Factory, counting
from tests.integration.test_cache_redis import (
    HOST,
    connected_cache,
    second,
    shared_config,
    wait_for,
)
from tests.integration.test_flag_gateway import admin, flag_config, flags_seen
from tests.rediscluster import RedisCluster, cluster_backend, redis_cli_binary


def redis_errors() -> float:
    return REGISTRY.get_sample_value("gateway_redis_errors_total") or 0.0


def clients_of(cluster: RedisCluster) -> dict[int, int]:
    """Normal client connections on each live node, the asking one left out."""
    counts = {}
    for node in cluster.nodes:
        if node.alive:
            listed = str(node.command("CLIENT", "LIST", "TYPE", "normal")).splitlines()
            counts[node.port] = len(listed) - 1
    return counts


def share_of_each_master(cluster: RedisCluster, counts: Callable[[Any], int]) -> list[float]:
    per_master = [counts(node) for node in cluster.masters]
    return [n / sum(per_master) for n in per_master]


async def test_connections_stay_bounded_per_node_under_concurrent_load(
        redis_cluster: RedisCluster) -> None:
    link = RedisLink(RedisSettings(url=redis_cluster.url, cluster=True, timeout=5.0,
                                   max_connections_per_node=4))
    seen: list[dict[int, int]] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            seen.append(await asyncio.to_thread(clients_of, redis_cluster))
            await asyncio.sleep(0.01)

    async def one(n: int) -> str:
        key = f"load:{n}"
        if n % 10 == 0:  # a pipeline spanning every node holds a connection on each
            async def spanning() -> list[Any]:
                pipe = link.client.pipeline(transaction=False)
                for k in range(n, n + 12):
                    pipe.incr(f"span:{k}")
                return list(await pipe.execute())
            await link.call(spanning)
        await link.call(lambda: link.client.set(key, n))
        return str(await link.call(lambda: link.client.get(key)), "ascii")

    sampler = asyncio.create_task(sample())
    try:
        for _ in range(3):
            answers = await asyncio.gather(*(one(n) for n in range(400)))
            assert answers == [str(n) for n in range(400)]
    finally:
        done.set()
        await sampler
        await link.close()
    busiest = {port: max(counts.get(port, 0) for counts in seen) for port in seen[0]}
    masters = {node.port for node in redis_cluster.masters}
    assert all(busiest[port] >= 1 for port in masters), busiest  # the load reached every master
    # 4 for commands; redis-py keeps one more open on a node it read the slot map from
    assert max(busiest.values()) <= 4 + 1, busiest


async def test_a_thousand_urls_spread_over_the_masters_and_purge_all_reaches_every_one(
        gateway_factory: Factory, upstream: Upstream, redis_cluster: RedisCluster) -> None:
    upstream.on("/market/spread/*", counting(Cache_Control="max-age=60"))
    config = shared_config(upstream, cluster_backend(redis_cluster))
    config["redis"]["timeout"] = "1s"  # every URL stored, however noisy the machine
    one = await gateway_factory(config, name="one.yaml")
    await connected_cache(one)
    for node in redis_cluster.masters:
        node.command("CONFIG", "RESETSTAT")
    urls = [f"{one.url}/market/spread/{n}" for n in range(1000)]
    async with client_session() as s:
        async def fetch(url: str) -> str:
            async with s.get(url, headers={"Host": HOST}) as r:
                await r.read()
                assert r.status == 200
                return r.headers["X-Cache"]

        for start in range(0, len(urls), 50):
            await asyncio.gather(*(fetch(url) for url in urls[start:start + 50]))

        def url_keys(node: Any) -> int:
            with node.client() as client:
                return sum(1 for _ in client.scan_iter(match="t:cache:0:u:*", count=1000))

        await wait_for(lambda: sum(url_keys(n) for n in redis_cluster.masters) == 1000,
                       timeout=30)
        keys = share_of_each_master(redis_cluster, url_keys)
        commands = share_of_each_master(redis_cluster, lambda node: sum(
            int(stats["calls"]) for name, stats in node.info("commandstats").items()
            if name in ("cmdstat_evalsha", "cmdstat_hgetall")))
        print(f"cache keys per master: {[f'{x:.1%}' for x in keys]}; "
              f"L2 commands per master: {[f'{x:.1%}' for x in commands]}")
        assert max(keys) <= 0.45 and max(commands) <= 0.45, (keys, commands)

        # Purge-all from a second gateway: every URL, whichever master holds it, misses.
        two = await gateway_factory(second(config), name="two.yaml")
        svc_two = await connected_cache(two)
        await svc_two.purge_all()
        svc_one = await connected_cache(one)
        await wait_for(lambda: svc_one.l2 is not None and svc_one.l2.gen == 1)
        answers = await asyncio.gather(*(fetch(url) for url in urls[::20]))
        assert set(answers) == {"MISS"}


async def kill_switch(session: aiohttp.ClientSession, gw: InProcessGateway, on: bool,
                      within: float = 20.0) -> None:
    """Flip the kill switch through `gw`'s admin API, retrying while the cluster fails over
    (the admin API answers 503 when the write cannot reach the flag hash's master)."""
    deadline = time.monotonic() + within
    while True:
        status, _ = await admin(session, "PATCH", f"{gw.admin_url}/admin/flags/maintenance_mode",
                                {"kill_switch": on})
        if status == 200:
            return
        assert status == 503 and time.monotonic() < deadline, status
        await asyncio.sleep(0.1)


async def seen_within(session: aiohttp.ClientSession, gw: InProcessGateway, value: str,
                      within: float) -> float:
    started = time.monotonic()
    while (await flags_seen(session, gw.url)).get("x-flag-maintenance-mode") != [value]:
        assert time.monotonic() - started < within, f"not {value} after {within}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_flag_changes_follow_when_the_node_listened_on_dies(
        gateway_factory: Factory, upstream: Upstream,
        redis_cluster_factory: Callable[[], RedisCluster]) -> None:
    cluster = redis_cluster_factory()
    config = flag_config(upstream, redis=cluster_backend(cluster).config(
        timeout="250ms", key_prefix="flagtest:"))
    first = await gateway_factory(config, name="first.yaml")
    receiver = await gateway_factory(second(config), name="second.yaml")
    assert receiver.process.services is not None
    subscription = receiver.process.services.flag_overrides._subscription
    assert subscription is not None
    await wait_for(lambda: subscription.listening_on is not None)
    listened = subscription.listening_on
    victim = next(node for node in cluster.nodes if node.address == listened)
    async with client_session() as s:
        await kill_switch(s, first, True)
        await seen_within(s, receiver, "false", within=5.0)
        victim.kill()  # a master: the configured node is the first one redis-cli made master
        await wait_for(lambda: subscription.listening_on not in (None, listened), timeout=20)
        await kill_switch(s, first, False)
        took = await seen_within(s, receiver, "true", within=5.0)
    print(f"flag change seen {took * 1000:.0f} ms after the admin call, listening on "
          f"{subscription.listening_on} after {listened} died")


async def load(gw: InProcessGateway, stop: asyncio.Event, paths: int
               ) -> tuple[dict[int, int], float]:
    """GETs over `paths` cached URLs until `stop`: (count per status, slowest answer)."""
    statuses: dict[int, int] = {}
    slowest = 0.0
    async with client_session() as s:
        async def worker(offset: int) -> None:
            nonlocal slowest
            n = offset
            while not stop.is_set():
                started = time.monotonic()
                async with s.get(f"{gw.url}/market/load/{n % paths}",
                                 headers={"Host": HOST}) as r:
                    await r.read()
                slowest = max(slowest, time.monotonic() - started)
                statuses[r.status] = statuses.get(r.status, 0) + 1
                n += 7

        await asyncio.gather(*(worker(i) for i in range(8)))
    return statuses, slowest


async def l2_works(config: dict[str, Any], gateway_factory: Factory, one: InProcessGateway,
                   path: str) -> None:
    """A URL fetched through `one` is served from L2 by a fresh gateway (started on `config`,
    which names a live node: a gateway needs its configured node to start). Each try takes a
    new URL, whose first answer from the fresh gateway must be a hit: a later one could come
    from that gateway's own L1."""
    other = await gateway_factory(second(config), name=f"check{abs(hash(path))}.yaml")
    await connected_cache(other)
    async with client_session() as s:
        for attempt in range(20):
            async with s.get(f"{one.url}{path}/{attempt}", headers={"Host": HOST}) as r:
                await r.read()
            await asyncio.sleep(0.3)  # the store into L2 follows the answer
            async with s.get(f"{other.url}{path}/{attempt}", headers={"Host": HOST}) as r:
                await r.read()
                if r.headers["X-Cache"] == "HIT":
                    return
    l2s = [gw.process.services.cache.l2 for gw in (one, other)]  # type: ignore[union-attr]
    raise AssertionError(f"{path}/*: never served from L2; generations "
                         f"{[l2.gen for l2 in l2s]}, breakers open "
                         f"{[l2.link.breaker.is_open for l2 in l2s]}")


async def under_load(gateway_factory: Factory, upstream: Upstream, cluster: RedisCluster,
                     timeout: str) -> tuple[InProcessGateway, asyncio.Event,
                                            asyncio.Task[tuple[dict[int, int], float]]]:
    """A gateway caching on `cluster` (entries fresh for 1 s, so L2 keeps being read and
    written), loaded for a second before the test acts; set the event to stop the load."""
    upstream.on("/market/*", counting(Cache_Control="max-age=1"))
    config = shared_config(upstream, cluster_backend(cluster))
    config["redis"]["timeout"] = timeout
    one = await gateway_factory(config, name="one.yaml")
    await connected_cache(one)
    stop = asyncio.Event()
    running = asyncio.create_task(load(one, stop, paths=300))
    await asyncio.sleep(1.0)
    return one, stop, running


async def test_a_master_killed_under_load_costs_clients_nothing(
        gateway_factory: Factory, upstream: Upstream,
        redis_cluster_factory: Callable[[], RedisCluster]) -> None:
    cluster = redis_cluster_factory()
    one, stop, running = await under_load(gateway_factory, upstream, cluster, "100ms")
    cluster.masters[0].kill()  # the configured node, the subscriptions' node too
    await asyncio.to_thread(cluster.wait_ok, 30)
    await asyncio.sleep(1.0)
    stop.set()
    statuses, slowest = await running
    print(f"failover under load: {statuses}, slowest answer {slowest * 1000:.0f} ms")
    assert set(statuses) == {200}
    await l2_works(shared_config(upstream, cluster_backend(cluster)), gateway_factory, one,
                   "/market/after-failover")


async def test_a_resharding_under_load_is_followed_without_errors(
        gateway_factory: Factory, upstream: Upstream,
        redis_cluster_factory: Callable[[], RedisCluster]) -> None:
    cluster = redis_cluster_factory()
    # a generous deadline: a noisy machine must not pass for a redirection error
    _, stop, running = await under_load(gateway_factory, upstream, cluster, "2s")
    errors = redis_errors()
    source, target = cluster.masters[:2]
    ids = {node.port: str(node.command("CLUSTER", "MYID")) for node in (source, target)}
    await asyncio.to_thread(subprocess.run, [
        redis_cli_binary(), "--cluster", "reshard", source.address,
        "--cluster-from", ids[source.port], "--cluster-to", ids[target.port],
        "--cluster-slots", "1200", "--cluster-yes", "--cluster-pipeline", "10"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    await asyncio.to_thread(cluster.wait_ok, 30)
    stop.set()
    statuses, slowest = await running
    print(f"resharding 1200 slots under load: {statuses}, slowest answer {slowest * 1000:.0f} ms")
    assert set(statuses) == {200}
    assert redis_errors() == errors  # every MOVED and ASK followed


async def answered(call: Callable[[], Any], within: float = 10.0) -> Any:
    """The first answer of `call` within `within` seconds: a short deadline on a noisy
    machine, or a breaker still cooling down, may refuse the first tries."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except RedisUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_hung_master_costs_each_call_the_deadline_then_the_breaker_opens(
        redis_cluster_factory: Callable[[], RedisCluster]) -> None:
    cluster = redis_cluster_factory()
    link = RedisLink(RedisSettings(url=cluster.url, cluster=True, timeout=0.2))
    try:
        await answered(lambda: link.call(lambda: link.client.set("hung", 1)))
        node = cluster.node_for_key("hung")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)  # connected, never answering
        try:
            for _ in range(3):
                with pytest.raises(RedisUnavailable, match="TimeoutError"):
                    await link.call(lambda: link.client.get("hung"))
            with pytest.raises(RedisUnavailable, match="breaker is open"):
                await link.call(lambda: link.client.get("hung"))
        finally:
            node.proc.send_signal(signal.SIGCONT)
        # after the cooldown one probe goes through, and its answer closes the breaker
        assert await answered(lambda: link.call(lambda: link.client.get("hung"))) == b"1"
        assert not link.breaker.is_open
    finally:
        await link.close()


async def test_a_client_that_lost_every_startup_node_finds_the_cluster_again(
        redis_cluster: RedisCluster) -> None:
    # redis-py drops a node from its startup nodes on each connection error or timeout met
    # there; under a failover with a short deadline live nodes time out too, and once none
    # is left the client could never reload its slot map (gateway/wire/redis_cluster.py).
    link = RedisLink(RedisSettings(url=redis_cluster.url, cluster=True, timeout=0.5))
    try:
        await answered(lambda: link.call(lambda: link.client.set("seeded", 1)))
        link.client.nodes_manager.startup_nodes.clear()  # what the timeouts leave
        await link.client.aclose()  # what redis-py does after one: the map is reloaded
        with pytest.raises(RedisUnavailable, match="RedisClusterException"):
            await link.call(lambda: link.client.get("seeded"))
        assert await answered(lambda: link.call(lambda: link.client.get("seeded"))) == b"1"
        assert not link.breaker.is_open
    finally:
        await link.close()
