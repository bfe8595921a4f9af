"""Rate-limit benchmark. Not collected by pytest; run as a script:

    python tests/perf/bench_ratelimit.py [--seconds 5] [--rounds 3] [--only micro|decisions|gateway]

0. micro: `RateLimiter.check` of a 3-rule route called directly by 64 tasks against a private
   redis-server: process CPU microseconds per check (what the limiter costs the gateway,
   without HTTP; steady on a busy machine). `--profile FILE` writes a cProfile of it.
1. Decisions per second of one process against a private local redis-server: the batching
   store (many EVALSHAs per round trip) vs one awaited EVALSHA per decision.
2. The gateway's requests per second (wrk) on a route with 3 rules vs a route with none,
   alternating in the same run against a fast raw-socket upstream; medians and their ratio,
   and the gateway's CPU time per request (its main figure: rps moves with the neighbours).
   With 2+ cores the gateway is pinned to CPU 0 and wrk, redis-server and the upstream to
   CPU 1 (`--no-pin` to turn it off), so the figures describe the gateway's own work.
Figures depend on the machine (and on whoever else is using it): compare only the numbers
of one run with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.config.model import Algorithm, RateLimitRule, RedisSettings, Scope
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.rules import make_check
from gateway.redisconn import RedisLink
from tests.harness import (
    GatewayProcessHandle,
    RedisServer,
    base_config,
    free_port,
    wait_for_port,
    write_config,
)

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            b"Connection: keep-alive\r\n\r\nok")


def serve_upstream(port: int) -> None:
    """A minimal keep-alive HTTP/1.1 server: the upstream must not be the bottleneck."""
    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:  # GET requests only: no bodies
                _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                self.transport.write(RESPONSE)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    uvloop.run(main())


async def decisions_per_second(url: str, batched: bool, seconds: float,
                               concurrency: int = 64) -> float:
    link = RedisLink(RedisSettings(url=url, timeout=2.0, max_connections=64))
    store = RedisStore(link, batched=batched)
    rules = [RateLimitRule(f"r{i}", alg, Scope("user"), 10**9, 60.0)
             for i, alg in enumerate((Algorithm.TOKEN_BUCKET, Algorithm.SLIDING_WINDOW,
                                      Algorithm.FIXED_WINDOW))]
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        checks = [make_check(rules[n % 3], "bench:", f"u{n}", None, 1)]
        while time.perf_counter() < stop:
            await store.decide(checks)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    await link.close()
    return done / elapsed


BENCH_RULES = (("per_user", "sliding_window", "user"), ("per_tenant", "token_bucket", "tenant"),
               ("per_ip", "fixed_window", "ip"))


def limiter_config(upstream_url: str, redis_url: str) -> dict[str, Any]:
    """Route `limited` with the 3 rules of BENCH_RULES, route `free` with none."""
    rules = {name: {"algorithm": alg, "scope": scope, "limit": 10**9, "window": "60s"}
             for name, alg, scope in BENCH_RULES}
    config = base_config(upstream_url, rate_limits=rules,
                         redis={"url": redis_url, "timeout": "200ms"})
    config["routes"] = [
        {"name": "limited", "match": {"path_prefix": "/limited"}, "upstream": "api",
         "rate_limits": list(rules)},
        {"name": "free", "match": {"path_prefix": "/"}, "upstream": "api"},
    ]
    return config


async def limiter_cpu(url: str, seconds: float, concurrency: int = 64, users: int = 64,
                      profile: str | None = None) -> tuple[float, float]:
    """`RateLimiter.check` of the 3-rule route by `concurrency` tasks (each its own user, as
    separate clients would be): (process CPU us per check, checks per wall second)."""
    from gateway.config.parse import parse_document
    from gateway.context import RequestContext
    from gateway.ratelimit import LocalStore, RateLimiter

    config = parse_document(limiter_config("http://127.0.0.1:1", url), "bench.yaml")
    link = RedisLink(config.redis)  # type: ignore[arg-type]
    limiter = RateLimiter(config, LocalStore(), RedisStore(link))
    route = next(r for r in config.routes if r.name == "limited")
    contexts = [RequestContext(client_ip=f"10.0.0.{n % 250}", user_id=f"u{n % users}",
                               tenant_id="t1", subscription_tier="free")
                for n in range(concurrency)]
    for ctx in contexts:  # warm: connections, script load, caches
        assert (await limiter.check(route, ctx, None, "r")).refusal is None  # type: ignore[arg-type]
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(ctx: RequestContext) -> None:
        nonlocal done
        check = limiter.check
        while time.perf_counter() < stop:
            await check(route, ctx, None, "r")  # type: ignore[arg-type]
            done += 1

    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(ctx) for ctx in contexts))
    cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    await link.close()
    return cpu / done * 1e6, done / elapsed


def wrk(url: str, seconds: float, connections: int = 64, cpus: str | None = None) -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-H",
           "X-User-Id: bench", "-H", "X-Tenant-Id: t1", url]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} non-2xx responses from {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def pin(pid: int, cpus: list[int] | None) -> None:
    if cpus is not None:
        psutil.Process(pid).cpu_affinity(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("micro", "decisions", "gateway"), action="append",
                        help="run only these parts (repeatable); default: all")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the micro-benchmark")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="tasks calling check in the micro-benchmark")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the gateway to CPU 0 and wrk/redis/upstream to CPU 1")
    args = parser.parse_args()
    parts = set(args.only or ("micro", "decisions", "gateway"))
    two_cores = not args.no_pin and len(psutil.Process().cpu_affinity() or []) >= 2
    # The process measured (gateway or this driver) gets CPU 0 alone; everything it talks to
    # shares CPU 1, so its CPU time and rps reflect its own work, not the load generator's.
    main_cpu, side_cpu = ([0], [1]) if two_cores else (None, None)

    redis = RedisServer().start()
    assert redis.proc is not None
    pin(redis.proc.pid, side_cpu)
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port)]
                                ) if "gateway" in parts else None
    if upstream is not None:
        pin(upstream.pid, side_cpu)
    gateway: GatewayProcessHandle | None = None
    try:
        import uvloop

        if "micro" in parts:
            me = psutil.Process()
            saved = me.cpu_affinity()
            pin(me.pid, main_cpu)
            micro = [uvloop.run(limiter_cpu(redis.url, args.seconds, args.concurrency,
                                            profile=args.profile))
                     for _ in range(args.rounds)]
            me.cpu_affinity(saved)
            cpu_us = statistics.median(m[0] for m in micro)
            print(f"micro: RateLimiter.check, 3 rules, {args.concurrency} concurrent, one process: "
                  f"{cpu_us:.1f} us CPU per check ({1e6 / cpu_us:,.0f} checks per CPU second); "
                  f"{statistics.median(m[1] for m in micro):,.0f} checks/s wall  "
                  f"(rounds, us: {[round(m[0], 1) for m in micro]})")

        if "decisions" in parts:
            batched, single = [], []
            for _ in range(args.rounds):
                batched.append(uvloop.run(decisions_per_second(redis.url, True, args.seconds)))
                single.append(uvloop.run(decisions_per_second(redis.url, False, args.seconds)))
            b, s = statistics.median(batched), statistics.median(single)
            print(f"decisions/s, one process, 64 concurrent: batched {b:,.0f}  "
                  f"one EVALSHA per decision {s:,.0f}  ratio {b / s:.2f}")

        if "gateway" not in parts:
            return
        wait_for_port(upstream_port)
        config = limiter_config(f"http://127.0.0.1:{upstream_port}", redis.url)
        path = write_config(Path(tempfile.mkdtemp(prefix="gw-bench-")), config)
        gateway = GatewayProcessHandle(path, workers=1).start()
        assert gateway.proc is not None
        proc = psutil.Process(gateway.proc.pid)
        for p in (proc, *proc.children(recursive=True)):
            pin(p.pid, main_cpu)
        wrk_cpus = ",".join(map(str, side_cpu)) if side_cpu else None
        base = gateway.url
        wrk(f"{base}/warm", 1, cpus=wrk_cpus)
        wrk(f"{base}/limited/warm", 1, cpus=wrk_cpus)
        none, limited, cpu_none, cpu_limited = [], [], [], []

        def cpu_seconds() -> float:  # the supervisor and its worker
            return sum(sum(p.cpu_times()[:2]) for p in (proc, *proc.children(recursive=True)))

        def measure(url: str, rps: list[float], cpu: list[float]) -> None:
            before = cpu_seconds()
            rate = wrk(url, args.seconds, cpus=wrk_cpus)
            rps.append(rate)
            cpu.append((cpu_seconds() - before) / (rate * args.seconds) * 1e6)

        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits both alike
            measure(f"{base}/x", none, cpu_none)
            measure(f"{base}/limited/x", limited, cpu_limited)
        n, lim = statistics.median(none), statistics.median(limited)
        pinned = "gateway on CPU 0, wrk+redis+upstream on CPU 1" if two_cores else "unpinned"
        print(f"gateway rps (wrk -t1 -c64, 1 worker, {pinned}): no rules {n:,.0f}  "
              f"3 rules {lim:,.0f}  ratio {lim / n:.2f}  (rounds: none "
              f"{[round(x) for x in none]}, 3 rules {[round(x) for x in limited]})")
        cn, cl = statistics.median(cpu_none), statistics.median(cpu_limited)
        print(f"gateway CPU per request: no rules {cn:.0f} us  3 rules {cl:.0f} us  "
              f"limiter {cl - cn:.0f} us  ratio {cn / cl:.2f}  (rounds: none "
              f"{[round(x) for x in cpu_none]}, 3 rules {[round(x) for x in cpu_limited]})")
        calls = redis.cli("INFO", "commandstats")
        print("redis:", calls.split("cmdstat_evalsha")[1][:60] if "evalsha" in calls else calls)
    finally:
        if gateway is not None:
            gateway.stop()
        if upstream is not None:
            upstream.terminate()
            upstream.wait()
        redis.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        serve_upstream(int(sys.argv[2]))
    else:
        main()
