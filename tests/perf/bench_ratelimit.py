"""Rate-limit benchmark (issue 3). Not collected by pytest; run as a script:

    python tests/perf/bench_ratelimit.py [--seconds 5] [--rounds 3]

1. Decisions per second of one process against a private local redis-server: the batching
   store (many EVALSHAs per round trip) vs one awaited EVALSHA per decision.
2. The gateway's requests per second (wrk) on a route with 3 rules vs a route with none,
   alternating in the same run against a fast raw-socket upstream; medians and their ratio.
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


def wrk(url: str, seconds: float, connections: int = 64) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-H", "X-User-Id: bench",
         "-H", "X-Tenant-Id: t1", url], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} non-2xx responses from {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    redis = RedisServer().start()
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port)]
                                ) if "--upstream" not in sys.argv else None
    gateway: GatewayProcessHandle | None = None
    try:
        import uvloop

        batched, single = [], []
        for _ in range(args.rounds):
            batched.append(uvloop.run(decisions_per_second(redis.url, True, args.seconds)))
            single.append(uvloop.run(decisions_per_second(redis.url, False, args.seconds)))
        b, s = statistics.median(batched), statistics.median(single)
        print(f"decisions/s, one process, 64 concurrent: batched {b:,.0f}  "
              f"one EVALSHA per decision {s:,.0f}  ratio {b / s:.2f}")

        wait_for_port(upstream_port)
        rules = {name: {"algorithm": alg, "scope": scope, "limit": 10**9, "window": "60s"}
                 for name, alg, scope in (("per_user", "sliding_window", "user"),
                                          ("per_tenant", "token_bucket", "tenant"),
                                          ("per_ip", "fixed_window", "ip"))}
        config = base_config(f"http://127.0.0.1:{upstream_port}", rate_limits=rules,
                             redis={"url": redis.url, "timeout": "200ms"})
        config["routes"] = [
            {"name": "limited", "match": {"path_prefix": "/limited"}, "upstream": "api",
             "rate_limits": list(rules)},
            {"name": "free", "match": {"path_prefix": "/"}, "upstream": "api"},
        ]
        path = write_config(Path(tempfile.mkdtemp(prefix="gw-bench-")), config)
        gateway = GatewayProcessHandle(path, workers=1).start()
        base = gateway.url
        wrk(f"{base}/warm", 1)
        wrk(f"{base}/limited/warm", 1)
        none, limited, cpu_none, cpu_limited = [], [], [], []
        assert gateway.proc is not None
        proc = psutil.Process(gateway.proc.pid)

        def measure(url: str, rps: list[float], cpu: list[float]) -> None:
            before = sum(proc.cpu_times()[:2])
            rate = wrk(url, args.seconds)
            rps.append(rate)
            cpu.append((sum(proc.cpu_times()[:2]) - before) / (rate * args.seconds) * 1e6)

        for _ in range(args.rounds):
            measure(f"{base}/x", none, cpu_none)
            measure(f"{base}/limited/x", limited, cpu_limited)
        n, lim = statistics.median(none), statistics.median(limited)
        print(f"gateway rps (wrk -t1 -c64, 1 worker): no rules {n:,.0f}  3 rules {lim:,.0f}  "
              f"ratio {lim / n:.2f}  (rounds: none {[round(x) for x in none]}, "
              f"3 rules {[round(x) for x in limited]})")
        cn, cl = statistics.median(cpu_none), statistics.median(cpu_limited)
        print(f"gateway CPU per request (less sensitive to a busy machine): no rules "
              f"{cn:.0f} us  3 rules {cl:.0f} us  ratio {cn / cl:.2f}")
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
