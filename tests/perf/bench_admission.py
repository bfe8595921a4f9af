"""Admission control under overload: prints figures against the targets.

An upstream serves 20 requests at once at 50 ms each (400 rps); an open-loop client offers
3x that (1,200 rps), 10% critical and 90% bulk, through a gateway with
`max_concurrency: 20`. Printed: critical latency (p50/p99, all served?), how fast bulk
requests are shed (p50/p99 of the 503s), the upstream's peak concurrency (never above 20),
and throughput to the upstream as a share of its capacity.

Adaptive: the upstream instead shares itself among whatever it is sent (each request takes
50 ms x max(1, in flight / capacity)); the gateway runs `max_concurrency: adaptive`; the
capacity halves mid-run, and the limit (polled from /admin/admission) and critical p99 per
second are printed, with the time the limit took to follow.

    .venv/bin/python tests/perf/bench_admission.py [--seconds 8] [--rate 1200] [--workers 1]
        [--capacity 20 --delay 0.05] [--only static|adaptive|none]
        [--instructions 300 [--baseline main] [--against REV]]

The upstream and the gateway run as child processes; the client runs here (uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import free_port, wait_for_port
from tests.perf.perfkit import cpu_seconds

UPSTREAM = r'''
import asyncio, json, random, sys
from aiohttp import web
capacity, delay, shared = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "shared"
jitter = float(sys.argv[5])
state = {"now": 0, "peak": 0, "over": 0, "served": 0, "capacity": capacity, "busy": 0.0}
async def handle(request):
    if request.path == "/_stats":
        return web.json_response(state)
    if request.path == "/_capacity":
        state["capacity"] = int(request.query["n"])
        return web.json_response(state)
    state["now"] += 1
    state["peak"] = max(state["peak"], state["now"])
    if state["now"] > state["capacity"] and not shared:
        state["over"] += 1
    try:
        factor = max(1.0, state["now"] / state["capacity"]) if shared else 1.0
        began = asyncio.get_running_loop().time()
        await asyncio.sleep(delay * factor * random.uniform(1 - jitter, 1 + jitter))
        state["busy"] += asyncio.get_running_loop().time() - began
        state["served"] += 1
        return web.Response(text="ok")
    finally:
        state["now"] -= 1
app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def start_upstream(capacity: int, delay: float, mode: str, jitter: float = 0.0
                   ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(port), str(capacity),
                             str(delay), mode, str(jitter)])
    wait_for_port(port, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def start_gateway(upstream: str, admission: dict[str, Any], workers: int, directory: Path
                  ) -> tuple[subprocess.Popen[bytes], str, str]:
    port, admin = free_port(), free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "workers": workers,
        "logging": {"level": "warning", "access_log": False},
        "upstreams": {"api": {"url": upstream, "max_connections": 512,
                              **({"admission": admission} if admission else {})}},
        "routes": [
            {"name": "critical", "match": {"path_prefix": "/critical"}, "upstream": "api",
             "priority": "critical"},
            {"name": "bulk", "match": {"path_prefix": "/bulk"}, "upstream": "api",
             "priority": "bulk"},
        ],
    }
    path = directory / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(path)],
                            env=env, cwd=REPO)
    wait_for_port(port, proc=proc)
    wait_for_port(admin, proc=proc)
    time.sleep(0.5 if workers == 1 else 2.0)
    return proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


class Connections:
    """Keep-alive HTTP/1.1 connections to one host, a bare client: the request is fixed
    bytes and the answer is read by its Content-Length. aiohttp's client cost several
    times more CPU per request, and on a shared machine a starved client reads as latency."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def offer(url: str, rate: float, seconds: float, critical_share: float,
                on_second: Any = None) -> tuple[list[tuple[str, int, float, float]], float]:
    """Open loop: request i starts at i / rate whatever the answers do; latency from then.
    Returns (class, status, seconds, started) per request, and how late the sender ran at
    worst (large: this client, not the gateway, was starved)."""
    results: list[tuple[str, int, float, float]] = []
    reasons: dict[str, int] = {}
    host, port = url.removeprefix("http://").split(":")
    pool = Connections(host, int(port))
    rng = random.Random(7)
    behind = 0.0

    async def one(kind: str, scheduled: float) -> None:
        try:
            status, body = await pool.get(f"/{kind}/x")
            if status == 503:
                slow = " (>5 ms)" if time.perf_counter() - scheduled > 0.005 else ""
                reason = f"{kind}:{json.loads(body).get('reason')}{slow}"
                reasons[reason] = reasons.get(reason, 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = 0
        results.append((kind, status, time.perf_counter() - scheduled, scheduled - began))

    began = time.perf_counter()
    tasks = []
    next_second = 1
    for i in range(int(rate * seconds)):
        scheduled = began + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            behind = max(behind, -delay)
        if on_second is not None and scheduled - began >= next_second:
            on_second(next_second)
            next_second += 1
        kind = "critical" if rng.random() < critical_share else "bulk"
        tasks.append(asyncio.ensure_future(one(kind, scheduled)))
    await asyncio.gather(*tasks)
    pool.close()
    print(f"  shed by class and reason: {dict(sorted(reasons.items()))}")
    return results, behind


async def stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return dict(await response.json(content_type=None))


def summary(results: list[tuple[str, int, float, float]], seconds: float) -> dict[str, Any]:
    critical = [r for r in results if r[0] == "critical"]
    bulk = [r for r in results if r[0] == "bulk"]
    shed = [r[2] * 1000 for r in bulk if r[1] == 503]
    return {
        "offered_rps": round(len(results) / seconds),
        "critical": len(critical),
        "critical_served": sum(1 for r in critical if r[1] == 200),
        "critical_p50_ms": round(percentile([r[2] * 1000 for r in critical], 50), 1),
        "critical_p99_ms": round(percentile([r[2] * 1000 for r in critical], 99), 1),
        "bulk": len(bulk),
        "bulk_served": sum(1 for r in bulk if r[1] == 200),
        "bulk_shed": len(shed),
        "bulk_shed_p50_ms": round(percentile(shed, 50), 2),
        "bulk_shed_p99_ms": round(percentile(shed, 99), 2),
        "bulk_shed_under_5ms": f"{sum(1 for s in shed if s < 5) / max(1, len(shed)):.1%}",
        "errors": sum(1 for r in results if r[1] not in (200, 503)),
    }


def gateway_side(exposition: str) -> dict[str, Any]:
    """Mean admission wait and mean time in the gateway per class, from its own metrics
    (what the client's figures add to these is the client's and the kernel's share), and
    how many bulk sheds the gateway decided within 5 ms of arrival (the rest waited in its
    queue first): the client's share of sheds under 5 ms adds its own and the kernel's
    delays to these."""
    values: dict[str, float] = {}
    shed = {(kind, key): 0.0 for kind in ("critical", "bulk") for key in ("count", "under")}
    for line in exposition.splitlines():
        if line.startswith("gateway_admission_shed_wait_seconds_"):
            kind = "bulk" if 'priority="bulk"' in line else \
                "critical" if 'priority="critical"' in line else None
            if kind is None:
                continue
            if line.startswith("gateway_admission_shed_wait_seconds_count"):
                shed[kind, "count"] += float(line.rsplit(" ", 1)[1])
            elif 'le="0.005"' in line:
                shed[kind, "under"] += float(line.rsplit(" ", 1)[1])
        for family, label, key in (
                ("gateway_admission_wait_seconds", "priority", "wait"),
                ("gateway_request_duration_seconds", "route", "total")):
            for suffix in ("_sum", "_count"):
                if line.startswith(family + suffix + "{"):
                    kind = "critical" if f'{label}="critical"' in line else \
                        "bulk" if f'{label}="bulk"' in line else None
                    if kind:
                        name = f"{kind}_{key}{suffix}"
                        values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    figures: dict[str, Any] = {
        f"{kind}_{key}_mean": round(values[f"{kind}_{key}_sum"] * 1000
                                    / values[f"{kind}_{key}_count"], 2)
        for kind in ("critical", "bulk") for key in ("wait", "total")
        if values.get(f"{kind}_{key}_count")}
    for kind in ("critical", "bulk"):
        count = shed[kind, "count"]
        figures[f"{kind}_shed_decided_under_5ms"] = \
            f"{shed[kind, 'under'] / max(1.0, count):.1%} of {count:.0f}"
    return figures


async def static_run(args: argparse.Namespace, directory: Path) -> None:
    capacity, delay = args.capacity, args.delay
    upstream, up_url = start_upstream(capacity, delay, "strict", args.jitter)
    gateway, url, admin = start_gateway(up_url, {"max_concurrency": capacity,
                                                 "target_delay": args.target_delay},
                                        args.workers, directory)
    try:
        before = await stats(f"{up_url}/_stats")
        cpu = cpu_seconds(gateway.pid), time.process_time()
        results, behind = await offer(url, args.rate, args.seconds, 0.1)
        cpu = cpu_seconds(gateway.pid) - cpu[0], time.process_time() - cpu[1]
        after = await stats(f"{up_url}/_stats")
        async with aiohttp.ClientSession() as session, \
                session.get(f"{admin}/metrics") as response:
            exposition = await response.text()
    finally:
        gateway.terminate(), upstream.terminate()
        gateway.wait(), upstream.wait()
    # The run's last requests finish after the schedule ends: count served over the time
    # from the first request to the last answer.
    spent = max(r[3] + r[2] for r in results)
    served = after["served"] - before["served"]
    figures = summary(results, args.seconds)
    figures.update(upstream_peak=after["peak"], upstream_over_limit=after["over"],
                   upstream_mean_ms=round((after["busy"] - before["busy"]) / max(1, served)
                                          * 1000, 1),
                   upstream_rps=round(served / spent),
                   throughput_of_capacity=f"{served / spent / (capacity / delay):.1%}",
                   # What the upstream's own timer overshoot leaves aside: the share of
                   # its slot-seconds that held a request.
                   upstream_slots_busy=f"{(after['busy'] - before['busy']) / (capacity * spent):.1%}",
                   gateway_cpu_share=f"{cpu[0] / spent:.0%}",
                   client_cpu_share=f"{cpu[1] / spent:.0%}",
                   client_behind_ms=round(behind * 1000, 1))
    figures["gateway_side_ms"] = gateway_side(exposition)
    print(f"static: max_concurrency {capacity}, upstream {capacity} at once x "
          f"{delay * 1000:.0f} ms ({capacity / delay:.0f} rps), offered {args.rate:.0f} rps, "
          f"{args.workers} worker(s), latency jitter +-{args.jitter:.0%}, target_delay "
          f"{args.target_delay}")
    print(json.dumps(figures, indent=2))


async def adaptive_run(args: argparse.Namespace, directory: Path) -> None:
    upstream, up_url = start_upstream(args.capacity, args.delay, "shared", args.jitter)
    gateway, url, admin = start_gateway(up_url, {"max_concurrency": "adaptive", "min": 4,
                                                 "max": 200}, args.workers, directory)
    seconds = max(args.seconds, 8.0)
    half = seconds / 2
    limits: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def poll() -> None:
        began = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(f"{admin}/admin/admission") as response:
                    report = await response.json()
                limits.append((time.perf_counter() - began,
                               report["upstreams"]["api"]["limit"]))
                await asyncio.sleep(0.2)

    halving: list[asyncio.Future[dict[str, Any]]] = []

    def halve(second: int) -> None:
        if second == int(half):
            halving.append(asyncio.ensure_future(
                stats(f"{up_url}/_capacity?n={args.capacity // 2}")))

    try:
        poller = asyncio.ensure_future(poll())
        results, behind = await offer(url, args.rate, seconds, 0.1, halve)
        stop.set()
        await poller
    finally:
        gateway.terminate(), upstream.terminate()
        gateway.wait(), upstream.wait()
    print(f"adaptive: min 4, max 200; upstream capacity {args.capacity} (x "
          f"{args.delay * 1000:.0f} ms, shared beyond), halved at t={half:.0f}s; offered "
          f"{args.rate:.0f} rps")
    settled = [limit for t, limit in limits if half - 1.5 <= t < half]
    before = sorted(settled)[len(settled) // 2] if settled else 0
    after = [limit for t, limit in limits if t >= seconds - 1.5]
    target = sorted(after)[len(after) // 2] if after else 0
    band = args.capacity / 2 * 1.5  # the limiter keeps between C + sqrt(C) and ~1.5 C
    followed = next((t - half for t, limit in limits if t >= half and limit <= band),
                    float("nan"))
    print(f"  (the client ran up to {behind * 1000:.0f} ms behind its schedule)")
    print(f"  limit before the halving (median of its last 1.5 s): {before}")
    print(f"  limit at the end (median of the last 1.5 s): {target}")
    print(f"  the limit was within 1.5x the new capacity ({band:.0f}) {followed:.1f} s after "
          "the halving")
    print("  per second: limit (last poll), critical p99 ms, critical served/sent")
    for second in range(int(seconds)):
        window = [r for r in results if second <= r[3] < second + 1 and r[0] == "critical"]
        polled = [limit for t, limit in limits if second <= t < second + 1]
        print(f"    t={second:2d}s  limit {polled[-1] if polled else '-':>4}  "
              f"p99 {percentile([r[2] * 1000 for r in window], 99):7.1f}  "
              f"{sum(1 for r in window if r[1] == 200)}/{len(window)}")


def bench_instructions(requests: int, baseline: str, against: str | None = None) -> None:
    """Instructions per request of a route with no admission, this tree (or `against`)
    against the merge-base of HEAD and `baseline` (callgrind, counted only while the
    requests run; best of 2 rounds each; PYTHONHASHSEED fixed, so both processes hash
    alike). `against` = the baseline's revision is the A/A control."""
    from tests.perf.bench_flags import _drive
    from tests.perf.perfkit import (
        Lab,
        checkout,
        gateway_config,
        instructions_per_request,
        snapshot,
    )

    rev = subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", baseline],
                         capture_output=True, text=True, check=True).stdout.strip()
    counts: dict[str, float] = {}
    with Lab() as lab:
        up = lab.upstream()
        candidate = (snapshot(lab.dir) if against is None else
                     checkout(against, lab.dir / "candidate"))
        sources = {f"baseline {rev[:8]}": checkout(rev, lab.dir),
                   "this tree" if against is None else f"candidate {against}": candidate}
        for name, source in sources.items():
            config = gateway_config(up.url, routes=[
                {"name": "none", "match": {"path_prefix": "/none/"}, "upstream": "api"}])
            port = config["listen"]["port"] = free_port()
            try:
                counts[name] = instructions_per_request(
                    config, lambda label, n, first, port=port: _drive(port, label, n, first),
                    ("none",), requests, source=source)["none"]
            except RuntimeError as exc:
                print(f"instructions: {exc}, skipped")
                return
    (base_name, base), (name, this) = counts.items()
    print(f"instructions per request, route without admission ({requests} requests, best of "
          f"2): {base_name} {base:,.0f}, {name} {this:,.0f} ({this / base - 1:+.2%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=1200.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=20,
                        help="requests the upstream serves at once")
    parser.add_argument("--delay", type=float, default=0.05,
                        help="seconds each takes (20 x 50 ms: 400 rps)")
    parser.add_argument("--target-delay", default="20ms", help="CoDel's target (static run)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="each takes delay x uniform(1 - J, 1 + J): a fixed latency "
                        "keeps permits in lockstep cohorts, which real services smear out")
    parser.add_argument("--only", choices=("static", "adaptive", "none"))
    parser.add_argument("--instructions", type=int, default=0, metavar="N",
                        help="also compare instructions per request of a route without "
                        "admission against --baseline under callgrind, N requests")
    parser.add_argument("--baseline", default="main",
                        help="the revision whose merge-base with HEAD is the baseline")
    parser.add_argument("--against", default=None,
                        help="a revision to count instead of this tree (the baseline's: A/A)")
    args = parser.parse_args()
    if args.instructions:
        bench_instructions(args.instructions, args.baseline, args.against)
    uvloop.install()
    directory = Path(tempfile.mkdtemp(prefix="gw-admission-"))
    if args.only in (None, "static"):
        asyncio.run(static_run(args, directory))
    if args.only in (None, "adaptive"):
        asyncio.run(adaptive_run(args, directory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
