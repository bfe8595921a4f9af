"""What the whole pipeline costs per request, as users run it (access log on). A script, not
collected by pytest:

    .venv/bin/python tests/perf/bench_pipeline.py [--requests 300] [--baseline REV]

Counts the gateway process's instructions per request under callgrind (repeatable whatever
the neighbours do; user space only) for a bare route with the access log off and on, so the
log's own cost is the difference. With --baseline, the same counts for another revision's
gateway package, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import free_port
from tests.perf.perfkit import (
    Lab,
    checkout,
    drive_keepalive,
    gateway_config,
    instructions_per_request,
)


def _request(n: int) -> bytes:
    return (f"GET /bare/item/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"User-Agent: bench\r\nAccept: */*\r\n\r\n").encode()


def count(upstream_url: str, requests: int, source: Path | None) -> dict[str, float]:
    """Bare route, access log off and on: two gateway processes, one label each."""
    found: dict[str, float] = {}
    for log in (False, True):
        config = gateway_config(upstream_url, routes=[
            {"name": "bare", "match": {"path_prefix": "/bare/"}, "upstream": "api"}])
        config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
        config["logging"]["access_log"] = log
        port = config["listen"]["port"]
        label = f"bare, log {'on' if log else 'off'}"
        found.update(instructions_per_request(
            config, lambda _label, n, first, port=port: drive_keepalive(port, _request, n, first),
            (label,), requests, source=source))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--baseline", metavar="REV", help="also count this revision")
    args = parser.parse_args()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        up = lab.upstream()
        rows = {"this tree": count(up.url, args.requests, None)}
        if args.baseline:
            rows[args.baseline] = count(up.url, args.requests,
                                        checkout(args.baseline, Path(tmp)))
    print(f"instructions per request (callgrind, {args.requests} requests, best of 2):")
    for name, found in rows.items():
        off, on = found["bare, log off"], found["bare, log on"]
        print(f"  {name:>12}: bare log off {off:>9,.0f}   log on {on:>9,.0f}   "
              f"the access log {on - off:>+9,.0f}")


if __name__ == "__main__":
    main()
