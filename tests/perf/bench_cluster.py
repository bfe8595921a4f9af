"""Rate limits on a Redis Cluster. Not collected by pytest; run as a script:

    python tests/perf/bench_cluster.py [--seconds 5] [--clients 4] [--rounds 3] [--skip-gateways]

1. Exactness: 4 gateway instances x 2 workers on one local 3-master (+3 replica) cluster,
   one route per algorithm (a per-user rule of limit 50, and a route adding a global rule
   of limit 50 on another slot): 1,000 concurrent requests of one user spread over the four
   instances; prints how many each route admitted.
2. Decisions per second: `--clients` processes, each one store with 256 decisions in
   flight over 1,000 users (a sliding-window user rule, then the same plus a global token
   bucket with shards: 8, so each decision spans two slots), against the cluster and
   against one redis-server on this machine, alternating. Prints decisions/s, each master's
   share of the EVALSHAs (INFO commandstats) and of the Redis CPU spent (INFO cpu), and the
   Redis CPU microseconds per decision: the figure the README's capacity model is built on.
On this 2-core machine the Python clients, not Redis, are the bottleneck: compare Redis CPU
per decision, not decisions/s, when sizing.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.config.model import Algorithm, RateLimitRule, RedisSettings, Scope
from gateway.context import RequestContext
from gateway.ratelimit.cluster_store import ClusterStore
from gateway.ratelimit.plan import RoutePlan
from gateway.ratelimit.redis_store import RedisStore
from gateway.redisconn import RedisLink
from tests.harness import GatewayProcessHandle, RedisServer, Upstream, base_config
from tests.rediscluster import RedisCluster

TIMEOUT = "250ms"  # 100 ms times out now and then on this shared, loaded machine
ALGORITHMS = ("token_bucket", "leaky_bucket", "sliding_window", "fixed_window")


# ---------------------------------------------------------------- 1. exactness

def gateway_config(upstream_url: str, cluster: RedisCluster) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    routes = []
    for algorithm in ALGORITHMS:
        burst = 49 if algorithm == "leaky_bucket" else 0
        rules[f"user_{algorithm}"] = {"algorithm": algorithm, "scope": "user", "limit": 50,
                                      "window": "1h", "burst": burst}
        rules[f"all_{algorithm}"] = {"algorithm": algorithm, "scope": "global", "limit": 50,
                                     "window": "1h", "burst": burst}
        routes.append({"name": algorithm, "match": {"path_prefix": f"/{algorithm}/"},
                       "upstream": "api", "rate_limits": [f"user_{algorithm}"]})
        routes.append({"name": f"{algorithm}_2", "match": {"path_prefix": f"/2/{algorithm}/"},
                       "upstream": "api",
                       "rate_limits": [f"all_{algorithm}", f"user_{algorithm}"]})
    config = base_config(upstream_url, rate_limits=rules, redis={
        "url": cluster.url, "cluster": True, "timeout": "2s", "failure_mode": "closed"})
    config["routes"] = routes
    return config


async def burst(urls: list[str], path: str, n: int, users: list[str]) -> Counter[int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def one(i: int) -> int:
            async with s.get(f"{urls[i % len(urls)]}{path}",
                             headers={"X-User-Id": users[i % len(users)]}) as r:
                await r.read()
                return r.status
        return Counter(await asyncio.gather(*(one(i) for i in range(n))))


async def exactness(cluster: RedisCluster, instances: int, workers: int) -> None:
    upstream = await Upstream().start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    gateways = []
    try:
        for i in range(instances):
            path = tmp / f"g{i}.yaml"
            path.write_text(yaml.safe_dump(gateway_config(upstream.url, cluster)))
            gateways.append(GatewayProcessHandle(path, workers).start(timeout=60))
        urls = [g.url for g in gateways]
        print(f"\n1. exactness: {instances} gateways x {workers} workers, 1,000 concurrent "
              "requests per route, limit 50")
        for algorithm in ALGORITHMS:
            one = await burst(urls, f"/{algorithm}/x", 1000, ["alice"])
            # 40 users of limit 50 each behind a global rule of 50 on another slot.
            two = await burst(urls, f"/2/{algorithm}/x", 1000, [f"u{n}" for n in range(40)])
            print(f"   {algorithm:15} one user: admitted {one[200]:4} (429: {one[429]}, "
                  f"other: {sum(one.values()) - one[200] - one[429]})   user+global on two "
                  f"slots: admitted {two[200]:4} (429: {two[429]}, other: "
                  f"{sum(two.values()) - two[200] - two[429]})")
    finally:
        for g in gateways:
            g.stop()
        await upstream.stop()


# ---------------------------------------------------------------- 3. failover

def users_on(cluster: RedisCluster, port: int, n: int) -> list[str]:
    from gateway.ratelimit.rules import rule_keys

    out: list[str] = []
    i = 0
    while len(out) < n:
        key = rule_keys("gw:", "per_user", Algorithm.FIXED_WINDOW, f"f{i}")[0]
        if cluster.node_for_key(key).port == port:
            out.append(f"f{i}")
        i += 1
    return out


async def failover(workers: int, full_coverage: bool) -> None:
    """Kill a master under load: how long its users get failure_mode, how long each of
    those answers took, and whether the other masters' users noticed. With Redis's default
    cluster-require-full-coverage yes, every node refuses every command (CLUSTERDOWN) from
    the moment the master is marked failed until its replica is promoted."""
    cluster = RedisCluster().start()
    if not full_coverage:
        for node in cluster.nodes:
            node.command("CONFIG", "SET", "cluster-require-full-coverage", "no")
    upstream = await Upstream().start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    gateway = None
    try:
        victim, other = cluster.masters[:2]
        hit_users, safe_users = users_on(cluster, victim.port, 50), users_on(cluster, other.port, 50)
        config = base_config(upstream.url, rate_limits={"per_user": {
            "algorithm": "fixed_window", "scope": "user", "limit": 10**6, "window": "1h"}},
            redis={"url": cluster.url, "cluster": True, "timeout": TIMEOUT,
                   "failure_mode": "closed"})
        config["routes"][0]["rate_limits"] = ["per_user"]
        path = tmp / "g.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = GatewayProcessHandle(path, workers).start(timeout=60)
        seen: list[tuple[float, float, int, bool]] = []  # (sent, took, status, on victim)
        stop = asyncio.Event()

        async def loop(users: list[str], on_victim: bool) -> None:
            async with aiohttp.ClientSession() as s:
                n = 0
                while not stop.is_set():
                    sent = time.monotonic()
                    async with s.get(f"{gateway.url}/x",
                                     headers={"X-User-Id": users[n % len(users)]}) as r:
                        await r.read()
                    seen.append((sent, time.monotonic() - sent, r.status, on_victim))
                    n += 1
                    await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(loop(users, v)) for users, v in
                 ((hit_users, True), (hit_users[25:], True), (safe_users, False))]
        await asyncio.sleep(2)
        victim.kill()
        killed = time.monotonic()
        await asyncio.to_thread(cluster.wait_ok, 30)
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*tasks)
        failed = [(t, took) for t, took, status, v in seen if v and status != 200]
        safe = Counter(status for t, _, status, v in seen if not v and t > killed)
        print(f"\n3. failover: a master killed under load ({workers} workers, redis.timeout "
              f"{TIMEOUT}, failure_mode closed, cluster-require-full-coverage "
              f"{'yes' if full_coverage else 'no'})")
        if failed:
            last = max(t for t, _ in failed)
            print(f"   its users: {len(failed)} answers 503 from +{failed[0][0] - killed:.2f} s "
                  f"to +{last - killed:.2f} s after the kill; the slowest took "
                  f"{max(took for _, took in failed) * 1000:.0f} ms, median "
                  f"{sorted(took for _, took in failed)[len(failed) // 2] * 1000:.1f} ms")
        print(f"   other masters' users meanwhile: {dict(safe)}")
        odd = [t - killed for t, _, status, v in seen if not v and status != 200]
        if odd:
            print(f"   (their 503s: from +{min(odd):.2f} s to +{max(odd):.2f} s)")
    finally:
        if gateway is not None:
            gateway.stop()
        await upstream.stop()
        cluster.close()


# ---------------------------------------------------------------- 2. decisions per second

def rules(two_slots: bool) -> tuple[RateLimitRule, ...]:
    user = RateLimitRule("per_user", Algorithm.SLIDING_WINDOW, Scope("user"), 10**9, 60.0)
    if not two_slots:
        return (user,)
    return (RateLimitRule("everyone", Algorithm.TOKEN_BUCKET, Scope("global"), 10**9, 60.0,
                          shards=8), user)


def client(url: str, cluster: bool, two_slots: bool, seconds: float, ready: Any, go: Any,
           out: Any) -> None:
    import uvloop

    async def run() -> int:
        link = RedisLink(RedisSettings(url=url, cluster=cluster, timeout=5.0))
        store = ClusterStore(link) if cluster else RedisStore(link)
        plan = RoutePlan(rules(two_slots), 1, "bench:")
        contexts = [RequestContext("192.0.2.1", user_id=f"user-{n}") for n in range(1000)]
        # Warm up: every (user, shard) combination prepared and encoded once, as in a
        # gateway that has been running a while; then all clients start together.
        for user in range(0, len(contexts), 32):
            await asyncio.gather(*(store.decide_prepared(plan.prepare(ctx))  # type: ignore[arg-type]
                                   for ctx in contexts[user:user + 32] for _ in range(8)))
        ready.put(True)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        done = 0
        end = time.monotonic() + seconds

        async def worker(seed: int) -> None:
            nonlocal done
            rng = random.Random(seed)
            while time.monotonic() < end:
                prepared = plan.prepare(rng.choice(contexts))
                assert prepared is not None
                await store.decide_prepared(prepared)
                done += 1

        await asyncio.gather(*(worker(i) for i in range(256)))
        await store.close()
        await link.close()
        return done

    out.put(uvloop.run(run()))


def node_stats(ports: list[int]) -> list[tuple[int, float]]:
    """(EVALSHA calls, Redis CPU seconds) per node."""
    out = []
    for port in ports:
        c = redis.Redis(port=port)
        try:
            stats, cpu = c.info("commandstats"), c.info("cpu")
        finally:
            c.close()
        calls = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        out.append((calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])))
    return out


def throughput(url: str, cluster: bool, two_slots: bool, ports: list[int], clients: int,
               seconds: float) -> tuple[float, list[tuple[int, float]]]:
    ctx = multiprocessing.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=client, args=(url, cluster, two_slots, seconds, ready, go, out))
             for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    for port in ports:
        c = redis.Redis(port=port)
        c.config_resetstat()
        c.close()
    before = node_stats(ports)
    go.set()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    after = node_stats(ports)
    for p in procs:
        p.join()
    deltas = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]
    return total / seconds, deltas


def report(label: str, rate: float, deltas: list[tuple[int, float]], decisions_per_call: float
           ) -> None:
    calls = sum(d[0] for d in deltas) or 1
    cpu = sum(d[1] for d in deltas) or 1e-9
    decisions = calls / decisions_per_call
    print(f"   {label:34} {rate:9,.0f} decisions/s   Redis CPU {cpu * 1e6 / decisions:5.1f} "
          f"us/decision ({decisions / cpu:,.0f} decisions per Redis core-second)")
    if len(deltas) > 1:
        shares = ", ".join(f"{d[0] / calls:4.0%} of EVALSHAs, {d[1] / cpu:4.0%} of CPU"
                           for d in deltas)
        print(f"   {'':34} per master: {shares}")


def decisions(cluster: RedisCluster, single: RedisServer, clients: int, seconds: float,
              rounds: int) -> None:
    masters = [node.port for node in cluster.masters]
    print(f"\n2. decisions per second: {clients} client processes x 256 in flight, 1,000 "
          f"users, median of {rounds} alternating rounds")
    for two_slots in (False, True):
        what = "user + global(shards 8)" if two_slots else "user rule"
        per_call = 2.0 if two_slots else 1.0  # on the cluster a decision is one EVALSHA per slot
        runs: dict[bool, list[tuple[float, list[tuple[int, float]]]]] = {False: [], True: []}
        for _ in range(rounds):
            for on_cluster in (False, True):
                url, ports = (cluster.url, masters) if on_cluster else (single.url, [single.port])
                runs[on_cluster].append(throughput(url, on_cluster, two_slots, ports, clients,
                                                   seconds))
                if on_cluster:
                    cluster.flushall()
                else:
                    single.cli("FLUSHALL")
        for on_cluster in (False, True):
            rate, deltas = sorted(runs[on_cluster], key=lambda r: r[0])[rounds // 2]
            label = f"{'cluster (3 masters)' if on_cluster else 'single redis-server'}, {what}"
            report(label, rate, deltas, per_call if on_cluster else 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-gateways", action="store_true")
    args = parser.parse_args()
    cluster = RedisCluster().start()
    single = RedisServer().start()
    try:
        if not args.skip_gateways:
            asyncio.run(exactness(cluster, args.instances, args.workers))
            cluster.flushall()
            for full_coverage in (True, False):
                asyncio.run(failover(args.workers, full_coverage))
        decisions(cluster, single, args.clients, args.seconds, args.rounds)
    finally:
        single.close()
        cluster.close()


if __name__ == "__main__":
    main()
