"""An open-loop load generator: requests start on a fixed schedule, whatever the answers do.

wrk is closed-loop (a connection sends its next request only after the previous answer), so
at saturation its latency is mostly queueing, and below saturation a slow answer delays the
requests behind it, which then go unmeasured ("coordinated omission"). Debian has no wrk2, so
this sends at a fixed rate R for D seconds over a keep-alive pool and measures every latency
from the moment the request was *scheduled*, not from when a free connection let it go.

    python tests/perf/openloop.py URL --rate 1000 --duration 5 [--connections 64]
        [--header 'Name: value'] [--method GET]

Prints one JSON object: sent, ok, errors, non2xx, p50_ms, p90_ms, p99_ms, max_ms, rate,
achieved_rate, behind_ms (how late the sender itself ran at worst: if large, this client
was the bottleneck and the figures are not to be trusted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp
import uvloop


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(url: str, rate: float, duration: float, connections: int,
              headers: dict[str, str], method: str) -> dict[str, float | int]:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    latencies: list[float] = []
    errors = non2xx = 0
    behind = 0.0
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def one(scheduled: float, record: bool) -> None:
            nonlocal errors, non2xx
            try:
                async with session.request(method, url, headers=headers) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        non2xx += 1
            except (TimeoutError, aiohttp.ClientError, OSError):
                errors += 1
                return
            if record:
                latencies.append(time.perf_counter() - scheduled)

        # Open the pool first, so the measurement does not include TCP handshakes.
        await asyncio.gather(*(one(time.perf_counter(), False) for _ in range(connections)))
        errors = non2xx = 0
        total = int(rate * duration)
        interval = 1.0 / rate
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        sent = 0
        while sent < total:
            now = time.perf_counter()
            # Everything due by now goes out at once: the schedule, not the loop, sets the pace.
            while sent < total and start + sent * interval <= now:
                scheduled = start + sent * interval
                behind = max(behind, now - scheduled)
                task = asyncio.ensure_future(one(scheduled, True))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if sent < total:
                await asyncio.sleep(max(0.0, start + sent * interval - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks)
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "sent": sent, "ok": len(latencies), "errors": errors, "non2xx": non2xx,
        "rate": rate, "achieved_rate": round(len(latencies) / elapsed, 1),
        "p50_ms": percentile(latencies, 50) * 1000, "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "behind_ms": behind * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive pool size")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--method", default="GET")
    args = parser.parse_args(argv)
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            parser.error(f"--header {item!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    result = uvloop.run(run(args.url, args.rate, args.duration, args.connections, headers,
                            args.method))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
