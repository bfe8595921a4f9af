"""The shared stores on a Redis Cluster against one redis-server, measured in the same run.
A script, not collected by pytest:

    .venv/bin/python tests/perf/bench_cluster_stores.py [--flips 20] [--seconds 3]

For each backend (one redis-server, then a local cluster of 3 masters and 3 replicas), two
in-process gateways sharing it:
1. A kill switch flipped through the first gateway's admin API: how long until the second
   serves it (target: within 1 s), FLIPS times, median and slowest.
2. A tag purge through the first gateway: how long until the second answers MISS for a URL
   it held in L1, FLIPS times.
3. Requests per second and latency of 8 clients over 300 cached URLs fresh for 1 s (so L2 is
   read and written throughout), SECONDS long.
Then, on the cluster only: the same load while the master the gateways listen on is killed,
until its replica has taken over and a second more: answers per status, latency
percentiles against the steady load before, and a kill switch flipped after the failover.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import InProcessGateway, RedisServer, Upstream, free_port, write_config
from tests.integration.test_cache import cached_config, counting
from tests.integration.test_flag_gateway import FLAGS, flags_seen
from tests.rediscluster import RedisBackend, RedisCluster, cluster_backend, single_backend

HOST = "shop.example"


def config(upstream: Upstream, backend: RedisBackend) -> dict[str, Any]:
    c = cached_config(upstream.url)
    c["redis"] = backend.config(timeout="100ms", key_prefix="bench:")
    c["cache"]["redis"] = True
    c["flags"] = FLAGS
    c["routes"][1]["flags"] = "all"
    c["listen"] = {"host": "127.0.0.1", "port": free_port()}
    c["admin"] = {"host": "127.0.0.1", "port": free_port()}
    c["logging"] = {"level": "warning", "access_log": False}
    return c


async def until(check: Any, limit: float = 10.0) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > limit:
            raise TimeoutError(f"not seen within {limit}s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def flips(s: aiohttp.ClientSession, one: InProcessGateway, two: InProcessGateway,
                count: int, refused: list[str] | None = None) -> list[float]:
    """Seconds until `two` serves each flip made through `one`; a flip refused with 503
    (Redis unreachable: nothing applied) is retried and noted in `refused`."""
    taken = []
    for n in range(count):
        on = n % 2 == 0
        while True:
            async with s.patch(f"{one.admin_url}/admin/flags/maintenance_mode",
                               json={"kill_switch": on}) as r:
                if r.status == 200:
                    break
                assert r.status == 503 and refused is not None, await r.text()
                refused.append((await r.json())["detail"])
            await asyncio.sleep(0.05)

        async def shown(on: bool = on) -> bool:
            seen = await flags_seen(s, two.url)
            return seen.get("x-flag-maintenance-mode") == ["false" if on else "true"]

        taken.append(await until(shown))
    return taken


async def purges(s: aiohttp.ClientSession, one: InProcessGateway, two: InProcessGateway,
                 count: int, backend: RedisBackend) -> list[float]:
    """Seconds until `two` stops serving a URL from L1 after a tag purge through `one`, the
    URL being stored and indexed under the tag first (the store follows the answer: a purge
    racing it would leave the entry in L2, to be served until its TTL)."""
    taken = []
    redis = backend.client()
    for n in range(count):
        url = f"/market/tagged/{n}"
        async with s.get(f"{one.url}{url}", headers={"Host": HOST}) as r:
            await r.read()

        async def indexed(n: int = n) -> bool:
            return bool(await asyncio.to_thread(redis.scard, f"bench:cache:0:t:{{t{n}}}"))

        await until(indexed)
        for _ in range(2):  # from L2, then held in the second's L1
            async with s.get(f"{two.url}{url}", headers={"Host": HOST}) as r:
                await r.read()
        assert r.headers["X-Cache"] == "HIT"
        async with s.post(f"{one.admin_url}/admin/cache/purge", json={"tag": f"t{n}"}) as r:
            assert r.status in (200, 202), await r.text()

        async def missed(url: str = url) -> bool:
            async with s.get(f"{two.url}{url}", headers={"Host": HOST}) as r:
                await r.read()
                return r.headers["X-Cache"] != "HIT"

        taken.append(await until(missed))
    return taken


async def load(gw: InProcessGateway, seconds: float | None, stop: asyncio.Event | None = None
               ) -> tuple[dict[int, int], list[float]]:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    ends = time.monotonic() + (seconds or 1e9)
    async with aiohttp.ClientSession() as s:
        async def worker(n: int) -> None:
            while time.monotonic() < ends and not (stop and stop.is_set()):
                started = time.monotonic()
                async with s.get(f"{gw.url}/market/load/{n % 300}",
                                 headers={"Host": HOST}) as r:
                    await r.read()
                latencies.append(time.monotonic() - started)
                statuses[r.status] = statuses.get(r.status, 0) + 1
                n += 7

        await asyncio.gather(*(worker(i) for i in range(8)))
    return statuses, latencies


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    q = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000  # noqa: E731
    return f"p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {ordered[-1] * 1000:.0f} ms"


async def bench(backend: RedisBackend, upstream: Upstream, tmp: Path, args: argparse.Namespace,
                cluster: RedisCluster | None) -> None:
    c1 = config(upstream, backend)
    c2 = dict(c1, listen={"host": "127.0.0.1", "port": free_port()},
              admin={"host": "127.0.0.1", "port": free_port()})
    one = await InProcessGateway(write_config(tmp, c1, f"{backend.name}-1.yaml")).start()
    two = await InProcessGateway(write_config(tmp, c2, f"{backend.name}-2.yaml")).start()
    try:
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as s:
            flip = await flips(s, one, two, args.flips)
            purge = await purges(s, one, two, args.flips, backend)
        print(f"[{backend.name}] kill switch seen by the other gateway: "
              f"median {statistics.median(flip) * 1000:.1f} ms, slowest {max(flip) * 1000:.1f} ms")
        print(f"[{backend.name}] tag purge seen by the other gateway: "
              f"median {statistics.median(purge) * 1000:.1f} ms, slowest {max(purge) * 1000:.1f} ms")
        statuses, latencies = await load(one, args.seconds)
        print(f"[{backend.name}] steady load: {len(latencies) / args.seconds:,.0f} rps, "
              f"{ms(latencies)}, {statuses}")
        if cluster is None:
            return
        stop = asyncio.Event()
        running = asyncio.create_task(load(one, None, stop))
        await asyncio.sleep(1.0)
        victim = next(n for n in cluster.masters if n.port == cluster.nodes[0].port)
        killed = time.monotonic()
        victim.kill()
        await asyncio.to_thread(cluster.wait_ok, 60)
        promoted = time.monotonic() - killed
        await asyncio.sleep(1.0)
        stop.set()
        statuses, latencies = await running
        print(f"[cluster] master killed under load: replica serving after {promoted:.1f} s; "
              f"{statuses}; {ms(latencies)}")
        refused: list[str] = []
        async with aiohttp.ClientSession() as s:
            flip = await flips(s, one, two, 4, refused)
        print(f"[cluster] kill switch after the failover: slowest {max(flip) * 1000:.1f} ms; "
              f"{len(refused)} refused with 503 first {sorted(set(refused))}")
    finally:
        await two.stop()
        await one.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flips", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    upstream = await Upstream().start()
    upstream.on("/market/load/*", counting(Cache_Control="max-age=1"))
    for n in range(args.flips):
        upstream.on(f"/market/tagged/{n}", counting(Cache_Control="max-age=60",
                                                    Surrogate_Key=f"t{n}"))
    server = RedisServer().start()
    cluster = RedisCluster().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            await bench(single_backend(server), upstream, Path(tmp), args, None)
            await bench(cluster_backend(cluster), upstream, Path(tmp), args, cluster)
    finally:
        cluster.close()
        server.close()
        await upstream.stop()


if __name__ == "__main__":
    asyncio.run(main())
