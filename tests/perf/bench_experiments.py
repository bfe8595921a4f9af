"""What experiments cost. A script, not collected by pytest:

    .venv/bin/python tests/perf/bench_experiments.py [--units 1000000] [--requests 300]
        [--users 1000] [--redis] [--keep DIR]

1. Redis memory per exposed unit: UNITS exposures (ids like "user-123456", two variants)
   applied through the real store and script to a private redis-server; used_memory before
   and after (target: 1,000,000 units in at most 150 MB).
2. Instructions per request (callgrind) of a flagged route whose flag a running experiment
   measures, against a route alike whose flag no experiment measures, in one gateway
   (target: at most 5% more). Every measured request comes from a user never seen before
   (the worst case: each one is a new unit to queue and store). With --users N, a second
   figure has the requests' users cycle over N (a user makes several requests, as in
   service: after the warm-up most exposures are repeats). With --redis, the gateway
   records into a private redis-server instead of its own memory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.config.model import RedisSettings
from gateway.experiments.store import Exposures, RedisExperimentStore
from gateway.redisconn import RedisLink
from tests.harness import RedisServer, free_port
from tests.perf.perfkit import Lab, drive_keepalive, gateway_config, instructions_per_request


async def memory_per_unit(units: int) -> None:
    server = RedisServer().start()
    link = RedisLink(RedisSettings(url=server.url, timeout=30.0))
    try:
        store = RedisExperimentStore(link)
        # An empty batch first: the store's connection and script are in used_memory
        # before, not counted against the units.
        await store.apply("e", ("purchase",), [])
        before = int((await link.client.info("memory"))["used_memory"])
        for start in range(0, units, 2000):
            ids = range(start, min(start + 2000, units))
            await store.apply("e", ("purchase",), [
                Exposures("control", [f"user-{i}" for i in ids if i % 2]),
                Exposures("treatment", [f"user-{i}" for i in ids if not i % 2])])
        after = int((await link.client.info("memory"))["used_memory"])
        counted = await store.read("e")
    finally:
        await link.close()
        server.close()
    per_unit = (after - before) / units
    print(f"redis memory: {units:,} units ({counted.units}) took {(after - before) / 1e6:.1f} MB"
          f" = {per_unit:.1f} bytes per unit; 1,000,000 units: {per_unit:.0f} MB "
          f"(target <= 150 MB)")


def _request(route: str, n: int, users: int = 50000) -> bytes:
    return (f"GET /{route}/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: user-{n % users}\r\n"
            f"\r\n").encode()


def flagged_config(upstream_url: str) -> dict[str, Any]:
    """Two routes of one gateway, alike but for a running experiment on the second's flag."""
    split = {"type": "multivariate", "default": "control",
             "variants": [{"name": "control", "value": "control", "weight": 50},
                          {"name": "treatment", "value": "treatment", "weight": 50}]}
    config = gateway_config(upstream_url, routes=[
        {"name": "plain", "match": {"path_prefix": "/plain/"}, "upstream": "api",
         "flags": ["plain"]},
        {"name": "measured", "match": {"path_prefix": "/measured/"}, "upstream": "api",
         "flags": ["measured"]}])
    config["logging"]["access_log"] = True
    config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
    config["flags"] = {"plain": split, "measured": split}
    config["experiments"] = {"measured_test": {
        "flag": "measured", "control": "control", "status": "running",
        "metrics": [{"name": "purchase", "primary": True},
                    {"name": "errors", "type": "error_rate", "guardrail": True,
                     "goal": "decrease"}]}}
    return config


def instructions(requests: int, users: int = 50000, redis_url: str | None = None,
                 keep: Path | None = None) -> None:
    """Both routes in one process (two processes of the same code differ by a few percent:
    hash seeds, memory layout), each label's count less an idle window as long as its
    requests took: the experiments' look (once a second) and the flushes run by the clock,
    and under callgrind a request takes ~50x its usual time, so they would weigh ~50x more
    per request than in service."""
    with Lab() as lab:
        up = lab.upstream()
        config = flagged_config(up.url)
        if redis_url is not None:
            config["redis"] = {"url": redis_url, "timeout": "1s"}
        port = config["listen"]["port"]
        took = [0.0]

        def drive(label: str, n: int, first: int) -> None:
            if label == "idle":
                time.sleep(took[0])
                return
            started = time.monotonic()
            drive_keepalive(port, lambda i: _request(label, i, users), n, first)
            took[0] = time.monotonic() - started

        counts = instructions_per_request(config, drive, ("plain", "idle", "measured", "idle"),
                                          requests, keep=keep)
    idle = counts["idle"]
    plain, measured = counts["plain"] - idle, counts["measured"] - idle
    who = "a new user each" if users > requests * 2 + 400 else f"users cycling over {users:,}"
    store = "Redis" if redis_url is not None else "in-process store"
    print(f"instructions per request (callgrind, {requests} requests, {who}, {store}, access "
          f"log on, one process, less an idle window as long: {idle:,.0f}): flag without "
          f"experiment "
          f"{plain:,.0f}, with a running experiment {measured:,.0f}: "
          f"{measured / plain - 1:+.1%} (target <= +5%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--users", type=int, default=0,
                        help="also count with the requests' users cycling over this many")
    parser.add_argument("--redis", action="store_true",
                        help="the gateway records into a private redis-server")
    parser.add_argument("--keep", type=Path,
                        help="a directory for each label's callgrind dump (callgrind_annotate)")
    args = parser.parse_args()
    asyncio.run(memory_per_unit(args.units))
    server = RedisServer().start() if args.redis else None
    try:
        url = server.url if server is not None else None
        instructions(args.requests, redis_url=url, keep=args.keep)
        if args.users:
            instructions(args.requests, args.users, url)
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
