"""Cache-hit rps vs proxied-miss rps vs the upstream reached directly, in one run, with wrk.

    /work/main/.venv/bin/python tests/perf/bench_cache.py [--duration 5] [--connections 32]

Starts a private redis-server, an upstream (child process) and one gateway (child process,
`python -m gateway run`) with a cached route and Redis as L2. Prints requests/s for:
  direct  - wrk against the upstream itself (the reference)
  miss    - through the gateway, a cached route whose response is `no-store` (every request
            goes upstream through the cache stage)
  hit     - through the gateway, an entry fresh in L1
and, for the hit run, how many requests reached the upstream and how many commands Redis
served (both should be 0). Not collected by pytest (tests/perf is outside testpaths).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import RedisServer, free_port, wait_for_port, write_config

UPSTREAM = """
import sys
from aiohttp import web
hits = {"n": 0}
async def market(request):
    hits["n"] += 1
    cc = "no-store" if request.path.endswith("nostore") else "max-age=3600"
    return web.Response(body=b"x" * 512, headers={"Cache-Control": cc})
async def count(request):
    return web.json_response(hits)
app = web.Application()
app.router.add_get("/_count", count)
app.router.add_get("/{tail:.*}", market)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def wrk(url: str, duration: int, connections: int) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx answers")
    return float(match.group(1))


def upstream_hits(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_count") as r:
        return int(json.loads(r.read())["n"])


def redis_calls(redis: RedisServer) -> int:
    import redis as redis_py

    client = redis_py.Redis(port=redis.port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    # Leave out what this probe itself sends (INFO, and redis-py's CLIENT SETINFO / HELLO on
    # connecting): only the gateway's commands count.
    return sum(int(v["calls"]) for k, v in stats.items()
               if k != "cmdstat_info" and not k.startswith(("cmdstat_client", "cmdstat_hello")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    redis = RedisServer().start()
    up_port, gw_port, admin_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # stderr hidden: wrk cutting connections at the end makes aiohttp log resets.
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)],
                                      stderr=subprocess.DEVNULL))
        wait_for_port(up_port, proc=procs[-1])
        config = {
            "listen": {"host": "127.0.0.1", "port": gw_port},
            "admin": {"host": "127.0.0.1", "port": admin_port},
            "logging": {"level": "warning", "access_log": False},
            "redis": {"url": redis.url, "timeout": "100ms"},
            "upstreams": {"api": {"url": f"http://127.0.0.1:{up_port}"}},
            "cache": {"memory_max": "64MiB", "max_object_size": "1MiB", "redis": True},
            "routes": [{"name": "market", "match": {"path_prefix": "/market/"},
                        "upstream": "api", "cache": {"ttl": "1h"}}],
        }
        path = write_config(Path(tempfile.mkdtemp(prefix="gw-bench-")), config)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                       str(path)], env=env, cwd=str(REPO)))
        wait_for_port(gw_port, proc=procs[-1])
        gw = f"http://127.0.0.1:{gw_port}"
        urllib.request.urlopen(f"{gw}/market/hit").read()  # store it
        time.sleep(0.3)  # let the L2 write land before we start counting Redis commands

        direct = wrk(f"http://127.0.0.1:{up_port}/market/direct", args.duration,
                     args.connections)
        miss = wrk(f"{gw}/market/nostore", args.duration, args.connections)
        time.sleep(1.0)  # requests wrk abandoned at its deadline may still be finishing
        before_up, before_redis = upstream_hits(up_port), redis_calls(redis)
        hit = wrk(f"{gw}/market/hit", args.duration, args.connections)
        after_up, after_redis = upstream_hits(up_port), redis_calls(redis)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=15)
        redis.close()

    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, 512-byte bodies, one gateway worker")
    print(f"direct upstream : {direct:10.0f} req/s")
    print(f"gateway miss    : {miss:10.0f} req/s  (no-store answers, each proxied)")
    print(f"gateway L1 hit  : {hit:10.0f} req/s  ({hit / miss:.1f}x the miss)")
    print(f"during the hit run: upstream requests {after_up - before_up}, "
          f"Redis commands {after_redis - before_redis}")
    ok = hit >= 3 * miss and after_up == before_up and after_redis == before_redis
    print("target (hit >= 3x miss, no upstream, no Redis):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
