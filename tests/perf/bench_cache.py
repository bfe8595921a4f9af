"""Cache-hit vs proxied-miss vs the upstream reached directly, in one run.

    /work/main/.venv/bin/python tests/perf/bench_cache.py [--duration 5] [--repeat 3]
        [--connections 32] [--baseline REV]

Starts (tests/perf/perfkit.py) an nginx upstream, a private redis-server and one gateway
(`python -m gateway run`, 1 worker, pinned to its own core) with a cached route and Redis as L2.
Measured interleaved (direct miss hit direct miss hit ...), medians printed with the gateway's
CPU microseconds per request (the steadier figure on a shared machine):
  direct  - wrk against the upstream itself (the reference)
  miss    - through the gateway, a cached route whose response is `no-store` (every request
            goes upstream through the cache stage)
  hit     - through the gateway, an entry fresh in L1, asked for with the same bytes every
            time (wrk's request): after the first hit these are answered by the lane of
            repeated requests (gateway/hitlane.py)
  hit-varied - the same entry, with a header whose value changes every request (X-Seq: n):
            bytes never seen before, so every hit goes through the whole pipeline
With --baseline REV the gateway of git revision REV runs beside it (`base-miss`, `base-hit`,
its own redis-server), so before/after come from the same run.

For every hit run it checks how many requests reached the upstream and how many commands Redis
served (both must be 0; the flag subscription's timed PING is counted apart). Not collected
by pytest (tests/perf is outside testpaths).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.harness import RedisServer, free_port
from tests.perf.perfkit import (
    LAYOUT,
    Lab,
    LoadResult,
    Service,
    checkout,
    interleaved,
    medians,
    say,
    table,
    tools,
    with_cpu,
    wrk,
)

BODY = "x" * 512
# wrk Lua: the cached URL with a field whose value no request repeats.
VARIED = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/market/hit", {["X-Seq"] = tostring(n)})
end
"""


def upstream_block(port: int, hits_log: Path) -> str:
    """nginx: `/market/nostore` answers no-store, anything else max-age=3600; requests for
    `/market/hit` are logged to `hits_log`, so a hit run can prove it never went upstream."""
    return f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type text/plain;
        location /market/nostore {{ add_header Cache-Control no-store; return 200 "{BODY}"; }}
        location /market/hit {{
            access_log {hits_log};
            add_header Cache-Control max-age=3600;
            return 200 "{BODY}";
        }}
        location / {{ add_header Cache-Control max-age=3600; return 200 "{BODY}"; }}
    }}
"""


def redis_calls(redis: RedisServer) -> Counter[str]:
    import redis as redis_py

    client = redis_py.Redis(port=redis.port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    # Leave out what this probe itself sends (INFO, and redis-py's CLIENT SETINFO / HELLO on
    # connecting): only the gateway's commands count.
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()
                    if k != "cmdstat_info"
                    and not k.startswith(("cmdstat_client", "cmdstat_hello"))})


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def config(upstream_url: str, redis: RedisServer) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "warning", "access_log": False},
        "redis": {"url": redis.url, "timeout": "100ms"},
        "upstreams": {"api": {"url": upstream_url}},
        "cache": {"memory_max": "64MiB", "max_object_size": "1MiB", "redis": True},
        "routes": [{"name": "market", "match": {"path_prefix": "/market/"},
                    "upstream": "api", "cache": {"ttl": "1h"}}],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the gateway of git revision REV (base-miss/base-hit)")
    args = parser.parse_args()

    if tools().nginx is None:
        raise SystemExit("bench_cache needs nginx as the upstream (apt-get install nginx-light)")
    print(LAYOUT.describe())
    redises: list[RedisServer] = []
    with Lab() as lab:
        try:
            up_port = free_port()
            hits_log = lab.dir / "upstream-hits.log"
            up = lab._nginx("upstream", upstream_block(up_port, hits_log), up_port, LAYOUT.load)
            gateways: dict[str, tuple[Service, RedisServer]] = {}
            for prefix, source in (("", None), ("base-", args.baseline)):
                if prefix and source is None:
                    continue
                redis = RedisServer().start()
                redises.append(redis)
                name = f"{prefix}gateway"
                gw = lab.gateway(config(up.url, redis), name=name,
                                 source=checkout(source, lab.dir) if source else None)
                urllib.request.urlopen(f"{gw.url}/market/hit").read()  # store it
                gateways[prefix] = (gw, redis)
            time.sleep(0.3)  # let the L2 writes land before we count Redis commands

            touched: dict[str, list[tuple[int, Counter[str]]]] = {}

            def hit(gw: Service, redis: RedisServer, name: str, lua: str = "") -> LoadResult:
                before_up, before_redis = lines(hits_log), redis_calls(redis)
                result = with_cpu(gw.pid, partial(wrk, f"{gw.url}/market/hit",
                                                  duration=args.duration,
                                                  connections=args.connections, lua=lua))
                time.sleep(0.2)  # nginx writes its log line after answering
                touched.setdefault(name, []).append(
                    (lines(hits_log) - before_up, redis_calls(redis) - before_redis))
                return result

            runs: dict[str, Any] = {"direct": partial(
                wrk, f"{up.url}/market/direct", duration=args.duration,
                connections=args.connections)}
            for prefix, (gw, redis) in gateways.items():
                runs[f"{prefix}miss"] = partial(with_cpu, gw.pid, partial(
                    wrk, f"{gw.url}/market/nostore", duration=args.duration,
                    connections=args.connections))
                runs[f"{prefix}hit"] = partial(hit, gw, redis, f"{prefix}hit")
                runs[f"{prefix}hit-varied"] = partial(hit, gw, redis, f"{prefix}hit-varied",
                                                      VARIED)
            results = interleaved(
                runs, args.repeat,
                warmup=lambda name: say(f"warm-up {name}"))
        finally:
            for redis in redises:
                redis.close()

    # direct has no gateway CPU figure: give it nan so the table shows the column for all.
    results["direct"] = [replace(r, extra={**r.extra, "cpu_us": float("nan")})
                         for r in results["direct"]]
    rows = medians(results)
    print()
    print(table(rows, [("hit", "miss"), ("hit-varied", "miss"), ("miss", "direct"),
                       ("hit", "direct"), ("base-hit", "base-miss"), ("hit", "base-hit"),
                       ("hit-varied", "base-hit-varied"), ("miss", "base-miss")],
                results,
                title=f"wrk -t1 -c{args.connections} -d{args.duration:g}s, 512-byte bodies, one "
                      f"gateway worker, medians of {args.repeat} interleaved rounds"))
    ok = rows["hit"].rps >= 3 * rows["miss"].rps
    for name, counts in touched.items():
        up_total = sum(c[0] for c in counts)
        commands = sum((c[1] for c in counts), Counter[str]())
        # The flag-override subscription PINGs its idle pub/sub connection every 5 s
        # (gateway/flags/store.py): a liveness probe on a timer, not a request's doing.
        background = commands.pop("ping", 0)
        redis_total = commands.total()
        print(f"during the {name} runs: upstream requests {up_total}, Redis commands "
              f"{redis_total}" + (f" {dict(commands)}" if commands else "")
              + (f" (and {background} background PINGs of the flag subscription)"
                 if background else ""))
        ok = ok and (not name.startswith("hit") or (up_total == 0 and redis_total == 0))
    print("target (hit >= 3x miss, no upstream, no Redis):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
