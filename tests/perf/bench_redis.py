"""The gateway's Redis side in one run: round trips, L2 throughput, Redis CPU, instructions.

    .venv/bin/python tests/perf/bench_redis.py [--duration 4] [--repeat 3] [--baseline REV]
        [--only trips|cache|decision|instructions ...] [--instructions 300] [--keep DIR]

Starts (tests/perf/perfkit.py) an nginx upstream (512-byte bodies, max-age=3600), private
redis-servers and gateways (`python -m gateway run`, 1 worker, access log on, pinned to
their own core); with --baseline REV the gateway (and Lua script) of git revision REV runs
beside this tree's, each with its own redis-server, so before and after come from one run.

1. trips: a route with 3 rate-limit rules (sliding window, token bucket, fixed window) and
   the L2 cache, a new URL on every request (decision + L2 lookup + L2 store each), driven
   by wrk at 1, 8 and 50 connections: Redis read events (`INFO stats`
   total_reads_processed: one per batch the gateway writes) and commands per request. A
   request awaits one round trip (decision and lookup leave together); its store goes
   later, batched with other requests' commands.
2. cache: interleaved wrk rounds of the naive proxy (tests/perf/naive_proxy.py, the
   reference), an L2 miss (a cached route with L2, a new URL each request) and an L2 hit
   with a cold L1 (`cache.memory_max: 1B`, so no entry ever stays in L1: each request is
   answered from Redis), medians and the ratios to the naive proxy.
3. decision: Redis CPU per 3-rule decision and per sliding-window decision,
   `INFO commandstats` usec_per_call of EVALSHA (minimum and median of interleaved rounds,
   64 users, pipelined), beside the redis-server process's CPU time per call.
4. instructions: callgrind instructions per request in the gateway process (user space)
   for an L2 miss, an L2 hit with a cold L1 and the limits+L2 route.

Targets (issue "Performance"): round trips per request fall with concurrency; L2 miss
>= 0.6x naive, L2 hit (cold L1) >= 1.5x naive; <= 12 us of Redis per 3-rule decision.
Figures on a shared machine: compare the numbers of one run with each other.
"""

from __future__ import annotations

import argparse
import pickle
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import hiredis
import psutil
import redis as redis_py

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.config.model import Algorithm, RateLimitRule, Scope
from gateway.ratelimit.redis_store import pack_evalsha, script_call
from gateway.ratelimit.rules import make_check
from tests.harness import RedisServer, free_port
from tests.perf.perfkit import (
    LAYOUT,
    REPO,
    Lab,
    LoadResult,
    Service,
    checkout,
    drive_keepalive,
    instructions_per_request,
    interleaved,
    medians,
    say,
    table,
    tools,
    with_cpu,
    wrk,
)

BODY = "x" * 512
RULES = {
    "per_user": {"algorithm": "sliding_window", "scope": "user", "limit": 10**9,
                 "window": "60s"},
    "per_tenant": {"algorithm": "token_bucket", "scope": "tenant", "limit": 10**9,
                   "window": "60s"},
    "per_ip": {"algorithm": "fixed_window", "scope": "ip", "limit": 10**9, "window": "60s"},
}
USER = {"X-User-Id": "bench", "X-Tenant-Id": "t1"}
HIT_URLS = 2000  # URLs stored in L2 for the hit runs


def new_urls(prefix: str) -> str:
    """wrk Lua: every request a URL never asked before (this run's random prefix)."""
    return f"""
local n = 0
local run = tostring(math.random(1, 1000000000)) .. tostring(os.time())
request = function()
  n = n + 1
  return wrk.format(nil, "{prefix}" .. run .. "-" .. n)
end
"""


def cycling_urls(prefix: str, count: int) -> str:
    """wrk Lua: the URLs {prefix}0 .. {prefix}{count-1}, round and round."""
    return f"""
local n = 0
request = function()
  n = (n + 1) % {count}
  return wrk.format(nil, "{prefix}" .. n)
end
"""


def upstream_block(port: int) -> str:
    return f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type text/plain;
        location / {{ add_header Cache-Control max-age=3600; return 200 "{BODY}"; }}
    }}
"""


def config(upstream_url: str, redis: RedisServer, memory_max: str = "64MiB"
           ) -> dict[str, Any]:
    """Route `both` (3 rules + cache with L2), route `market` (cache with L2)."""
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "warning", "access_log": True},
        "redis": {"url": redis.url, "timeout": "500ms"},
        "upstreams": {"api": {"url": upstream_url}},
        "cache": {"memory_max": memory_max, "max_object_size": "1MiB", "redis": True},
        "rate_limits": RULES,
        "routes": [
            {"name": "both", "match": {"path_prefix": "/both/"}, "upstream": "api",
             "rate_limits": list(RULES), "cache": {"ttl": "1h"}},
            {"name": "market", "match": {"path_prefix": "/market/"}, "upstream": "api",
             "cache": {"ttl": "1h"}},
        ],
    }


def redis_stats(redis: RedisServer) -> tuple[int, int]:
    """(read events processed, EVALSHA + HGETALL calls) by the server so far: each batch
    the gateway writes is one read event; commands that scripts run are left out."""
    client = redis_py.Redis(port=redis.port)
    try:
        stats, calls = client.info("stats"), client.info("commandstats")
    finally:
        client.close()
    called = sum(int(calls.get(f"cmdstat_{name}", {}).get("calls", 0))
                 for name in ("evalsha", "hgetall"))
    return int(stats["total_reads_processed"]), called


# ---------------------------------------------------------------- 1. round trips

def round_trips(gateways: dict[str, tuple[Service, RedisServer]], duration: float) -> None:
    print("\nRedis round trips per request, route with 3 rules + L2, new URL each request "
          "(a storable miss: decision, lookup, store)")
    print(f"{'gateway':<14} {'connections':>11} {'rps':>9} {'reads/req':>10} "
          f"{'EVALSHA+HGETALL/req':>20}")
    for name, (gw, redis) in gateways.items():
        for connections in (1, 8, 50):
            reads, commands = redis_stats(redis)
            result = wrk(f"{gw.url}/both/", duration=duration, connections=connections,
                         headers=USER, lua=new_urls("/both/"))
            time.sleep(0.3)  # the last stores land
            reads2, commands2 = redis_stats(redis)
            # Our own INFO commands are two reads on each side of the run.
            per_read = (reads2 - reads - 2) / result.requests
            per_command = (commands2 - commands) / result.requests
            print(f"{name:<14} {connections:>11} {result.rps:>9,.0f} {per_read:>10.2f} "
                  f"{per_command:>20.2f}")


# ---------------------------------------------------------------- 2. L2 throughput

def cache_runs(lab: Lab, gateways: dict[str, tuple[Service, RedisServer]],
               cold: dict[str, Service], naive: Service, args: argparse.Namespace) -> None:
    runs: dict[str, Callable[[], LoadResult]] = {
        "naive": partial(with_cpu, naive.pid, partial(
            wrk, f"{naive.url}/market/naive", duration=args.duration,
            connections=args.connections))}
    for prefix, (gw, _) in gateways.items():
        runs[f"{prefix}l2-miss"] = partial(with_cpu, gw.pid, partial(
            wrk, f"{gw.url}/market/", duration=args.duration, connections=args.connections,
            lua=new_urls("/market/m")))
    for prefix, gw in cold.items():
        runs[f"{prefix}l2-hit"] = partial(with_cpu, gw.pid, partial(
            wrk, f"{gw.url}/market/", duration=args.duration, connections=args.connections,
            lua=cycling_urls("/market/h", HIT_URLS)))
    results = interleaved(runs, args.repeat, warmup=lambda name: say(f"warm-up {name}"))
    rows = medians(results)
    ratios = [(f"{p}l2-miss", "naive") for p in gateways] + \
        [(f"{p}l2-hit", "naive") for p in cold]
    print()
    print(table(rows, ratios, results,
                title=f"wrk -t1 -c{args.connections} -d{args.duration:g}s, 512-byte bodies, "
                      f"access log on, medians of {args.repeat} interleaved rounds"))
    miss, hit = rows["l2-miss"].rps / rows["naive"].rps, rows["l2-hit"].rps / rows["naive"].rps
    print(f"targets: L2 miss >= 0.6x naive: {miss:.2f}x "
          f"{'met' if miss >= 0.6 else 'NOT met'}; L2 hit (cold L1) >= 1.5x naive: "
          f"{hit:.2f}x {'met' if hit >= 1.5 else 'NOT met'}")


def fill_l2(gw: Service, count: int) -> None:
    drive_keepalive(int(gw.url.rsplit(":", 1)[1]),
                    lambda n: f"GET /market/h{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                    count, 0, connections=8)


# ---------------------------------------------------------------- 3. Redis CPU per decision

def _run_pipelined(port: int, commands: list[bytes], total: int, batch: int = 64) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    reader = hiredis.Reader()
    sent = 0
    try:
        while sent < total:
            chunk = [commands[(sent + i) % len(commands)] for i in range(batch)]
            sock.sendall(b"".join(chunk))
            got = 0
            while got < len(chunk):
                reader.feed(sock.recv(1 << 20))
                while (reply := reader.gets()) is not False:
                    if isinstance(reply, Exception):
                        raise reply
                    got += 1
            sent += len(chunk)
    finally:
        sock.close()


# A tree's own encoder makes its EVALSHAs, so a baseline whose script reads another ARGV
# layout is measured as it runs.
_WIRE = """
import pickle, sys
from gateway.config.model import Algorithm, RateLimitRule, Scope
from gateway.ratelimit.redis_store import pack_evalsha, script_call
from gateway.ratelimit.rules import make_check
sha, algorithms, prefix, users, window = pickle.load(sys.stdin.buffer)
rules = [RateLimitRule(f"r{i}", Algorithm(a), Scope("user"), 10**9, window)
         for i, a in enumerate(algorithms)]
sys.stdout.buffer.write(pickle.dumps([pack_evalsha(sha, *script_call(
    [make_check(rule, prefix, f"u{u}", None, 1) for rule in rules], None, True))
    for u in range(users)]))
"""


def decision_wire(tree: Path | None, sha: bytes, algorithms: tuple[Algorithm, ...],
                  prefix: str, window: float, users: int = 64) -> list[bytes]:
    """One EVALSHA per user deciding `algorithms` (10^9 per `window` seconds), encoded by
    `tree`'s gateway (None: this one)."""
    if tree is None:
        rules = [RateLimitRule(f"r{i}", a, Scope("user"), 10**9, window)
                 for i, a in enumerate(algorithms)]
        return [pack_evalsha(sha, *script_call(
            [make_check(rule, prefix, f"u{u}", None, 1) for rule in rules], None, True))
            for u in range(users)]
    made = subprocess.run([sys.executable, "-c", _WIRE], cwd=tree, capture_output=True,
                          check=True, input=pickle.dumps(
                              (sha, [a.value for a in algorithms], prefix, users, window)))
    wire: list[bytes] = pickle.loads(made.stdout)
    return wire


def decision_cost(sources: dict[str, tuple[str, Path | None]], rounds: int,
                  calls: int, window: float) -> None:
    """usec_per_call of EVALSHA per script and rule set, interleaved rounds."""
    redis = RedisServer().start()
    assert redis.proc is not None
    psutil.Process(redis.proc.pid).cpu_affinity(sorted(LAYOUT.load or [0]))
    client = redis_py.Redis(port=redis.port)
    server = psutil.Process(redis.proc.pid)
    sets = {"3 rules": (Algorithm.SLIDING_WINDOW, Algorithm.TOKEN_BUCKET,
                        Algorithm.FIXED_WINDOW),
            "sliding window": (Algorithm.SLIDING_WINDOW,)}
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for round_no in range(rounds):
            order = list(sources.items()) if round_no % 2 == 0 else list(sources.items())[::-1]
            for name, (source, tree) in order:
                sha = client.script_load(source).encode()
                for label, algorithms in sets.items():
                    wire = decision_wire(tree, sha, algorithms, f"{name}{round_no}:", window)
                    _run_pipelined(redis.port, wire, 2000)  # warm: keys exist
                    client.config_resetstat()
                    cpu = sum(server.cpu_times()[:2])
                    _run_pipelined(redis.port, wire, calls)
                    cpu = (sum(server.cpu_times()[:2]) - cpu) / calls * 1e6
                    usec = float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
                    found.setdefault((name, label), []).append((usec, cpu))
    finally:
        client.close()
        redis.close()
    print(f"\nRedis per decision (EVALSHA usec_per_call of INFO commandstats; {rounds} "
          f"interleaved rounds of {calls:,} calls, 64 users, rules of 10^9 per {window:g} s)")
    for (name, label), values in found.items():
        usecs = sorted(u for u, _ in values)
        print(f"{name:<10} {label:<15} min {usecs[0]:6.2f} us  median "
              f"{statistics.median(usecs):6.2f} us  (rounds {usecs})  redis-server CPU "
              f"{statistics.median(c for _, c in values):6.2f} us/call")
    best = min(u for u, _ in found[("this tree", "3 rules")])
    print(f"target: <= 12 us per 3-rule decision: {best:.2f} us "
          f"{'met' if best <= 12 else 'NOT met'} (minimum of the rounds)")


def decision_instructions(sources: dict[str, tuple[str, Path | None]], calls: int,
                          window: float) -> None:
    """redis-server's instructions per EVALSHA under callgrind (whole server: parsing,
    script, reply), which the neighbours cannot move as they move usec_per_call."""
    import shutil
    import tempfile

    if shutil.which("valgrind") is None:
        say("valgrind not installed: no instruction count of redis-server")
        return
    from tests.harness import redis_server_binary, wait_for_port

    print(f"\nredis-server instructions per decision (callgrind, {calls:,} EVALSHAs after "
          f"{calls:,} to warm, 64 users)")
    for name, (source, tree) in sources.items():
        for label, algorithms in (("3 rules", (Algorithm.SLIDING_WINDOW, Algorithm.TOKEN_BUCKET,
                                               Algorithm.FIXED_WINDOW)),
                                  ("sliding window", (Algorithm.SLIDING_WINDOW,))):
            port = free_port()
            with tempfile.TemporaryDirectory() as out:
                proc = subprocess.Popen(
                    ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                     f"--callgrind-out-file={out}/cg.out", redis_server_binary(),
                     "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", out, "--protected-mode", "no"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_for_port(port, timeout=60, proc=proc)
                    client = redis_py.Redis(port=port)
                    sha = client.script_load(source).encode()
                    client.close()
                    wire = decision_wire(tree, sha, algorithms, "i:", window)
                    _run_pipelined(port, wire, calls)
                    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)],
                                   capture_output=True, check=False)
                    _run_pipelined(port, wire, calls)
                    subprocess.run(["callgrind_control", "-d", str(proc.pid)],
                                   capture_output=True, check=False)
                    time.sleep(1)
                    dumps = sorted(Path(out).glob("cg.out*"), key=lambda f: f.stat().st_mtime)
                    totals = [line for line in dumps[-1].read_text().splitlines()
                              if line.startswith(("summary:", "totals:"))]
                    count = int(totals[-1].split()[1]) / calls
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
            print(f"{name:<10} {label:<15} {count:>10,.0f} instructions")


# ---------------------------------------------------------------- 4. instructions

def instructions(upstream_url: str, count: int, baseline: Path | None,
                 keep: Path | None = None) -> None:
    print(f"\ninstructions per request in the gateway process (callgrind, {count} requests, "
          f"best of 2)")
    for name, source in (("this tree", None), ("baseline", baseline)):
        if name == "baseline" and source is None:
            continue
        for label, memory_max in (("l2", "64MiB"), ("cold-l1", "1B")):
            redis = RedisServer().start()
            try:
                cfg = config(upstream_url, redis, memory_max)
                port = cfg["listen"]["port"]

                def drive(kind: str, n: int, first: int, port: int = port) -> None:
                    path = {"miss": "/market/i", "hit": "/market/h", "both": "/both/i"}[kind]
                    head = "X-User-Id: bench\r\nX-Tenant-Id: t1\r\n" if kind == "both" else ""
                    number = (lambda i: i % 50) if kind == "hit" else (lambda i: i)
                    drive_keepalive(port, lambda i: (f"GET {path}{number(i)} HTTP/1.1\r\n"
                                                     f"Host: x\r\n{head}\r\n").encode(),
                                    n, first, connections=4)

                labels = ("hit",) if label == "cold-l1" else ("miss", "both")
                counts = instructions_per_request(
                    cfg, drive, labels, count, warm=100, source=source,
                    keep=None if keep is None else keep / f"{name.replace(' ', '-')}-{label}")
            finally:
                redis.close()
            for kind, value in counts.items():
                what = {"miss": "L2 miss (new URL)", "hit": "L2 hit, cold L1",
                        "both": "3 rules + L2 miss"}[kind]
                print(f"{name:<10} {what:<20} {value:>12,.0f}")


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (cache)")
    parser.add_argument("--baseline", metavar="REV", help="also measure git revision REV")
    parser.add_argument("--only", action="append",
                        choices=("trips", "cache", "decision", "instructions"))
    parser.add_argument("--instructions", type=int, default=300,
                        help="requests counted per callgrind round")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each instruction count's callgrind dump in DIR")
    parser.add_argument("--calls", type=int, default=30000, help="EVALSHAs per decision round")
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds of the decision rules' window (short: a sliding "
                             "window's entries leave on every request)")
    args = parser.parse_args()
    parts = set(args.only or ("trips", "cache", "decision", "instructions"))
    if tools().nginx is None:
        raise SystemExit("bench_redis needs nginx as the upstream (apt-get install nginx-light)")
    print(LAYOUT.describe())

    with Lab() as lab:
        baseline = checkout(args.baseline, lab.dir) if args.baseline else None
        if "decision" in parts:
            sources: dict[str, tuple[str, Path | None]] = {
                "this tree": ((REPO / "lua" / "ratelimit.lua").read_text(), None)}
            if baseline is not None:
                sources["baseline"] = ((baseline / "lua" / "ratelimit.lua").read_text(),
                                       baseline)
            decision_cost(sources, args.repeat, args.calls, args.window)
            decision_instructions(sources, min(args.calls, 5000), args.window)
        up_port = free_port()
        up = lab._nginx("upstream", upstream_block(up_port), up_port, LAYOUT.load)
        if "instructions" in parts:
            instructions(up.url, args.instructions, baseline, args.keep)
        if not parts & {"trips", "cache"}:
            return 0
        redises: list[RedisServer] = []
        try:
            gateways: dict[str, tuple[Service, RedisServer]] = {}
            cold: dict[str, Service] = {}
            for prefix, source in (("", None), ("base-", baseline)):
                if prefix and source is None:
                    continue
                redis = RedisServer().start()
                redises.append(redis)
                gw = lab.gateway(config(up.url, redis), name=f"{prefix}gateway", source=source)
                gateways[prefix] = (gw, redis)
                cold[prefix] = lab.gateway(config(up.url, redis, "1B"),
                                           name=f"{prefix}cold", source=source)
                fill_l2(gw, HIT_URLS)
            if "trips" in parts:
                round_trips({f"{p}gateway": g for p, g in gateways.items()}, args.duration)
            if "cache" in parts:
                naive = lab.naive_proxy(up.url)
                cache_runs(lab, gateways, cold, naive, args)
        finally:
            for redis in redises:
                redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
