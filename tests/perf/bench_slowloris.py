"""Idle and slowloris connections against a 2-worker gateway at `ulimit -n 4096`.

Holds --connections attacking connections open for --duration seconds (half idle: connect
and send nothing; half slowloris: a partial head, then one more byte every second), opening
a new one whenever the gateway closes one, while two clients send legitimate requests (one
new connection per request, and one kept-alive connection). Prints:

- legitimate requests: sent, succeeded (200), failed, latency p50/p99/max;
- slow connections: opened, closed by the gateway, the longest lifetime (must stay under
  header_timeout + 1 s), how many slowloris ones got a 408;
- the workers' largest open-file count.

    .venv/bin/python tests/perf/bench_slowloris.py --connections 5000 --duration 30

Loopback only; every process it starts is stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import base_config, free_port, wait_for_port, write_config

HEAD = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: "


@dataclass
class Slow:
    opened: int = 0
    closed: int = 0
    answered_408: int = 0
    lifetimes: list[float] = field(default_factory=list)
    connect_errors: int = 0


@dataclass
class Legit:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def legit_client(port: int, stop: threading.Event, result: Legit, keep_alive: bool) -> None:
    """Sequential GETs, 20 a second; every one must be answered 200 within 5 s."""
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        began = time.monotonic()
        try:
            if conn is None or not keep_alive:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/legit")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                result.failures.append(f"status {response.status}")
            else:
                result.latencies.append(time.monotonic() - began)
        except (OSError, http.client.HTTPException) as exc:
            result.failures.append(f"{type(exc).__name__}: {exc}")
            conn = None
        if not keep_alive and conn is not None:
            conn.close()
        stop.wait(max(0.0, 0.05 - (time.monotonic() - began)))


async def slow_connection(port: int, trickle: bool, slow: Slow, until: float,
                          trickling: set[asyncio.StreamWriter]) -> None:
    """One attacking connection at a time, replaced when the gateway closes it."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            slow.connect_errors += 1
            await asyncio.sleep(0.5)
            continue
        slow.opened += 1
        opened = loop.time()
        if trickle:
            writer.write(HEAD)
            trickling.add(writer)
        try:
            got = await asyncio.wait_for(reader.read(), max(0.0, until - loop.time()))
        except (TimeoutError, OSError):
            got = None
        finally:
            trickling.discard(writer)
            writer.close()
        if got is not None:  # the gateway closed it, not the end of the run
            slow.closed += 1
            slow.lifetimes.append(loop.time() - opened)
            slow.answered_408 += got.startswith(b"HTTP/1.1 408")


async def trickle(trickling: set[asyncio.StreamWriter], until: float) -> None:
    """One more byte of the head on every slowloris connection, every second."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await asyncio.sleep(1.0)
        for writer in list(trickling):
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(b"p")


async def attack(port: int, connections: int, duration: float, slow: Slow) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + duration
    trickling: set[asyncio.StreamWriter] = set()
    tasks = [loop.create_task(trickle(trickling, until))]
    for i in range(connections):
        tasks.append(loop.create_task(
            slow_connection(port, i % 2 == 1, slow, until, trickling)))
        if i % 250 == 249:
            await asyncio.sleep(0.1)  # 2,500 connections a second: no SYN-queue overflow
    await asyncio.gather(*tasks)


def worker_fds(supervisor: int) -> int:
    total = 0
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        for pid in children:
            with contextlib.suppress(OSError):
                total = max(total, len(os.listdir(f"/proc/{pid}/fd")))
    return total


def start_gateway(workdir: Path, upstream_port: int, files: int, header_timeout: str,
                  source: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = base_config(f"http://127.0.0.1:{upstream_port}")
    config["listen"]["header_timeout"] = header_timeout
    config["logging"] = {"level": "warning", "access_log": False,
                         "bad_request_lines_per_second": 10}
    config["workers"] = 2
    path = write_config(workdir, config)
    log = open(workdir / "gateway.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        ["sh", "-c", f'ulimit -n {files} && exec "$0" -m gateway run --config "$1"',
         sys.executable, str(path)],
        cwd=str(source), env=dict(os.environ, PYTHONPATH=str(source)),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(config["listen"]["port"], timeout=20, proc=proc)
    time.sleep(1.0)  # both workers listening
    return proc, int(config["listen"]["port"])


def start_upstream(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/perf/responder.py"), str(port),
                             "ok\n"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for_port(port, proc=proc)
    return proc, port


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--files", type=int, default=4096, help="the gateway's ulimit -n")
    parser.add_argument("--header-timeout", default="10s")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the checkout whose gateway to run (default: this one)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 512
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))

    workdir = Path(tempfile.mkdtemp(prefix="gw-slowloris-"))
    upstream, upstream_port = start_upstream(workdir)
    gateway, port = start_gateway(workdir, upstream_port, args.files, args.header_timeout,
                                  args.source)
    slow, legit_new, legit_kept = Slow(), Legit(), Legit()
    stop = threading.Event()
    threads = [threading.Thread(target=legit_client, args=(port, stop, legit_new, False)),
               threading.Thread(target=legit_client, args=(port, stop, legit_kept, True))]
    peak_fds = 0
    try:
        for t in threads:
            t.start()
        began = time.monotonic()
        attacker = threading.Thread(target=lambda: uvloop.run(
            attack(port, args.connections, args.duration, slow)))
        attacker.start()
        while attacker.is_alive():
            peak_fds = max(peak_fds, worker_fds(gateway.pid))
            attacker.join(0.5)
        time.sleep(2.0)  # legitimate traffic goes on after the attack
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
    finally:
        stop.set()
        for proc in (gateway, upstream):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
    log_size = (workdir / "gateway.log").stat().st_size

    timeout = float(args.header_timeout.rstrip("s"))
    late = sum(1 for life in slow.lifetimes if life > timeout + 1.0)
    print(f"gateway: 2 workers, ulimit -n {args.files}, header_timeout {timeout:g}s; "
          f"{args.connections} slow connections held for {args.duration:g}s "
          f"(run {elapsed:.1f}s)")
    for name, legit in (("new connection each", legit_new), ("kept-alive", legit_kept)):
        sent = len(legit.latencies) + len(legit.failures)
        print(f"legitimate ({name}): {sent} sent, {len(legit.latencies)} ok "
              f"({100.0 * len(legit.latencies) / max(sent, 1):.2f}%), "
              f"{len(legit.failures)} failed; latency p50 "
              f"{1000 * percentile(legit.latencies, 0.5):.1f} ms, p99 "
              f"{1000 * percentile(legit.latencies, 0.99):.1f} ms, max "
              f"{1000 * max(legit.latencies, default=float('nan')):.1f} ms")
        for failure in sorted(set(legit.failures))[:5]:
            print(f"    failure: {failure} x{legit.failures.count(failure)}")
    print(f"slow connections: {slow.opened} opened, {slow.closed} closed by the gateway "
          f"({slow.answered_408} slowloris answered 408), connect errors "
          f"{slow.connect_errors}")
    if slow.lifetimes:
        print(f"slow connection lifetime: median {statistics.median(slow.lifetimes):.2f}s, "
              f"max {max(slow.lifetimes):.2f}s; {late} lived longer than "
              f"{timeout + 1.0:g}s")
    print(f"largest open-file count of a worker: {peak_fds}; gateway log {log_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
