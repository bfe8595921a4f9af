"""Instructions per cache hit and per proxied miss, under callgrind. A script, not collected:

    .venv/bin/python tests/perf/bench_cache_instructions.py [--requests 300] [--baseline REV]

The same hit (an entry fresh in L1) and miss (a cached route whose response is `no-store`) as
tests/perf/bench_cache.py, against its nginx upstream, but counted in instructions of the
gateway process (tests/perf/perfkit.py instructions_per_request): repeatable whatever the
neighbours on the shared machine do, where wrk's rps moved by +-15% between rounds. L1 only
(no Redis): a fresh L1 hit never reaches Redis, and a no-store miss stores nothing. With
--baseline, the same counts for another revision's gateway package, in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import free_port
from tests.perf.bench_cache import upstream_block
from tests.perf.perfkit import (
    LAYOUT,
    Lab,
    checkout,
    drive_keepalive,
    gateway_config,
    instructions_per_request,
)

PATHS = {"hit": "/market/hit", "miss": "/market/nostore"}


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n".encode()


def count(upstream_url: str, requests: int, source: Path | None) -> dict[str, float]:
    config: dict[str, Any] = gateway_config(upstream_url, routes=[
        {"name": "market", "match": {"path_prefix": "/market/"}, "upstream": "api",
         "cache": {"ttl": "1h"}}])
    config["cache"] = {"memory_max": "64MiB", "max_object_size": "1MiB"}
    config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
    port = config["listen"]["port"]

    def drive(label: str, n: int, first: int) -> None:
        wire = _request(PATHS[label])
        drive_keepalive(port, lambda _: wire, n, first)

    return instructions_per_request(config, drive, tuple(PATHS), requests, source=source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--baseline", metavar="REV", help="also count this revision")
    args = parser.parse_args()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        up_port = free_port()
        up = lab._nginx("upstream", upstream_block(up_port, lab.dir / "hits.log"), up_port,
                        LAYOUT.load)
        rows = {"this tree": count(up.url, args.requests, None)}
        if args.baseline:
            rows[args.baseline[:12]] = count(up.url, args.requests,
                                             checkout(args.baseline, Path(tmp)))
    print(f"instructions per request (callgrind, {args.requests} requests, best of 2):")
    for name, found in rows.items():
        hit, miss = found["hit"], found["miss"]
        print(f"  {name:>12}: hit {hit:>9,.0f}   miss {miss:>9,.0f}   miss/hit {miss / hit:.2f}")


if __name__ == "__main__":
    main()
