"""Fuzz the proxy and admin ports of a 2-worker gateway with mutated requests.

For --seconds seconds, --clients connections at a time send requests built from a small
corpus of valid ones (GET, POST with Content-Length and chunked bodies, Expect, pipelining,
absolute-form targets, admin calls) and mutated: bytes flipped, inserted, deleted and
duplicated, line endings changed, versions and methods replaced, fields repeated or made
huge, bodies cut short or sent slowly, connections dropped mid-request. Meanwhile legitimate
clients call the proxy (every 50 ms) and the admin port (/healthz and /metrics, every
500 ms). Prints, at the end:

- worker crashes (worker pids that changed, and the supervisor's "exited" lines);
- legitimate requests per 30-second slice: sent, failed;
- RSS and open files of every gateway process: after the warm-up, at the end, the largest;
- the log's size, its lines by level, and how many tracebacks it holds;
- the fuzzers' answers by status.

    .venv/bin/python tests/perf/fuzz_edge.py --seconds 300

Loopback only; deterministic for a given --seed; every process it starts is stopped at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.harness import base_config, free_port, wait_for_port, write_config

UPSTREAM = """
import asyncio, sys
from tests.harness import Upstream
async def main():
    up = await Upstream().start(int(sys.argv[1]))
    while True:  # forget what it saw: its memory is not what is measured
        await asyncio.sleep(5)
        up.hits.clear()
        up.bodies.clear()
asyncio.run(main())
"""

CORPUS = [
    b"GET /plain/a?x=1 HTTP/1.1\r\nHost: svc\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"GET /cached/item HTTP/1.1\r\nHost: svc\r\nX-User-Id: u1\r\n\r\n",
    b"HEAD /limited/x HTTP/1.1\r\nHost: svc\r\nX-Api-Key: k\r\n\r\n",
    b"POST /small/up HTTP/1.1\r\nHost: svc\r\nContent-Length: 11\r\n"
    b"Content-Type: text/plain\r\n\r\nhello world",
    b"POST /plain/up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"PUT /plain/up HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n"
    b"\r\nbody",
    b"GET http://svc/plain/abs HTTP/1.1\r\nHost: other\r\n\r\n",
    b"GET /plain/1 HTTP/1.1\r\nHost: svc\r\n\r\nGET /plain/2 HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET /plain/ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET /plain/%2e%2e/%2F/x%00y HTTP/1.0\r\n\r\n",
]
ADMIN_CORPUS = [
    b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /admin/config HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /admin/flags HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /admin/ratelimits/ip_big?key=1.2.3.4 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /admin/cache/purge HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    b"Content-Length: 24\r\n\r\n{\"url\": \"http://svc/x\"}",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/9.9",
            b"http/1.1", b"HTTP/1.1 ", b"HTTP/11", b""]
METHODS = [b"GET", b"POST", b"BREW", b"G ET", b"get", b"\x00", b"CONNECT", b"TRACE",
           b"M" * 300, b"\x16\x03\x01"]
FIELDS = [b"Content-Length: -1", b"Content-Length: 99999999999999999999",
          b"Content-Length: 5\r\nContent-Length: 6", b"Transfer-Encoding: gzip, chunked",
          b"Transfer-Encoding: chunked\r\nContent-Length: 3", b"Host:", b": novalue",
          b"X_Under_Score: 1", b"X-Bad\x7f: 1", b"X-Fold: a\r\n b", b"Expect: 100-continue",
          b"Connection: close", b"Connection: keep-alive, Upgrade", b"X-Request-Id: \xff\xfe",
          b"Cookie: " + b"c" * 20000, b"X-Many: 1\r\n" * 200, b"Content-Encoding: gzip",
          b"X-Forwarded-For: 1.1.1.1, , garbage"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four random edits of `data`."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(11)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # flip a byte
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 1:  # insert random bytes
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 2 and out:  # delete a range
            del out[at:at + rng.randint(1, 16)]
        elif kind == 3:  # duplicate a range
            out[at:at] = out[at:at + rng.randint(1, 64)]
        elif kind == 4:  # line endings
            out = bytearray(out.replace(b"\r\n", rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"]),
                                        rng.randint(1, 3)))
        elif kind == 5:  # version
            line_end = out.find(b"\r\n")
            if line_end > 0:
                space = out.rfind(b" ", 0, line_end)
                out[space + 1:line_end] = rng.choice(VERSIONS)
        elif kind == 6:  # method
            space = out.find(b" ")
            if space > 0:
                out[:space] = rng.choice(METHODS)
        elif kind == 7:  # a field
            line_end = out.find(b"\r\n")
            if line_end > 0:
                out[line_end + 2:line_end + 2] = rng.choice(FIELDS) + b"\r\n"
        elif kind == 8:  # a huge target
            space = out.find(b" /")
            if space > 0:
                out[space + 2:space + 2] = b"a" * rng.choice([100, 9000, 70000])
        elif kind == 9:  # cut short
            del out[rng.randrange(len(out) + 1):]
        else:  # chunk sizes
            out = bytearray(out.replace(b"\r\n5\r\n", rng.choice(
                [b"\r\nzz\r\n", b"\r\n-1\r\n", b"\r\nffffffffffffffffff\r\n", b"\r\n5;x=\"\r\n"])))
    return bytes(out)


@dataclass
class Tally:
    sent: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    samples: dict[str, bytes] = field(default_factory=dict)  # a request per 5xx status


async def fuzz_one(rng: random.Random, port: int, data: bytes, tally: Tally) -> None:
    tally.sent += 1
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        tally.statuses["connect failed"] += 1
        return
    try:
        style = rng.randrange(10)
        if style == 0:  # slowly, in small pieces
            for i in range(0, len(data), 7):
                writer.write(data[i:i + 7])
                await writer.drain()
                await asyncio.sleep(rng.choice([0.0, 0.05, 0.3]))
        else:
            writer.write(data)
            await writer.drain()
        if style == 1:  # drop the connection at once
            return
        answer = await asyncio.wait_for(reader.read(64), rng.choice([0.2, 0.2, 1.0, 3.0]))
        status = (answer[9:12].decode("latin-1") if answer.startswith(b"HTTP/") else
                  ("closed" if not answer else "other"))
        tally.statuses[status] += 1
        if status.startswith("5") and status not in ("505", "503"):
            tally.samples.setdefault(f"{status} from port {port}", data)
    except TimeoutError:
        tally.statuses["no answer yet"] += 1
    except (OSError, RuntimeError):  # uvloop: RuntimeError writing to a closed transport
        tally.statuses["reset"] += 1
    finally:
        writer.close()


async def fuzzer(seed: int, proxy: int, admin: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        if rng.random() < 0.3:
            port, base = admin, rng.choice(ADMIN_CORPUS)
        else:
            port, base = proxy, rng.choice(CORPUS)
        data = base if rng.random() < 0.05 else mutate(rng, base)
        await fuzz_one(rng, port, data, tally)


@dataclass
class Legit:
    slices: collections.defaultdict[int, list[int]] = field(
        default_factory=lambda: collections.defaultdict(lambda: [0, 0]))
    failures: collections.Counter[str] = field(default_factory=collections.Counter)


async def legit(url: str, every: float, began: float, until: float, result: Legit,
                paths: list[str]) -> None:
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        i = 0
        while loop.time() < until:
            path = paths[i % len(paths)]
            i += 1
            slot = result.slices[int((loop.time() - began) // 30)]
            slot[0] += 1
            try:
                async with session.get(url + path) as response:
                    await response.read()
                    if response.status != 200:
                        slot[1] += 1
                        result.failures[f"{path}: {response.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                slot[1] += 1
                result.failures[f"{path}: {type(exc).__name__}"] += 1
            await asyncio.sleep(every)


def process_figures(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open files) of one process; (0, 0) once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0, 0


def workers_of(supervisor: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in
                Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()]
    return []


def fuzz_config(upstream: str) -> dict[str, object]:
    config = base_config(upstream)
    config["listen"].update({"header_timeout": "2s", "idle_timeout": "5s",
                             "body_timeout": "2s", "max_header_size": "16KiB"})
    config["logging"] = {"level": "info", "access_log": False,
                         "bad_request_lines_per_second": 10}
    config["workers"] = 2
    config["rate_limits"] = {"ip_big": {"algorithm": "token_bucket", "scope": "ip",
                                        "limit": 1_000_000, "window": "1s",
                                        "action": "reject"}}
    config["cache"] = {"memory_max": "8MiB"}
    config["routes"] = [
        {"name": "cached", "match": {"path_prefix": "/cached/"}, "upstream": "api",
         "cache": {"ttl": "5s"}},
        {"name": "limited", "match": {"path_prefix": "/limited/"}, "upstream": "api",
         "rate_limits": ["ip_big"]},
        {"name": "small", "match": {"path_prefix": "/small/"}, "upstream": "api",
         "max_body": "1KiB"},
        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"},
    ]
    return config


async def run(args: argparse.Namespace, proxy: int, admin: int, supervisor: int
              ) -> tuple[Tally, Legit, Legit, dict[int, list[tuple[int, int]]], set[int]]:
    loop = asyncio.get_running_loop()
    began = loop.time()
    until = began + args.seconds
    tally, legit_proxy, legit_admin = Tally(), Legit(), Legit()
    tasks = [loop.create_task(fuzzer(args.seed + i, proxy, admin, until, tally))
             for i in range(args.clients)]
    tasks.append(loop.create_task(legit(f"http://127.0.0.1:{proxy}", 0.05, began, until,
                                        legit_proxy, ["/plain/ok", "/cached/c", "/limited/l"])))
    tasks.append(loop.create_task(legit(f"http://127.0.0.1:{admin}", 0.5, began, until,
                                        legit_admin, ["/healthz", "/metrics"])))
    samples: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    seen: set[int] = set(workers_of(supervisor))
    while loop.time() < until:
        await asyncio.sleep(5)
        pids = workers_of(supervisor)
        seen.update(pids)
        for pid in [supervisor, *pids]:
            samples[pid].append(process_figures(pid))
        elapsed = loop.time() - began
        print(f"[fuzz] {elapsed:5.0f}s: {tally.sent} fuzz requests; workers "
              + ", ".join(f"{pid} {samples[pid][-1][0] // 1024} MiB {samples[pid][-1][1]} fds"
                          for pid in pids), file=sys.stderr, flush=True)
    await asyncio.gather(*tasks)
    return tally, legit_proxy, legit_admin, samples, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gw-fuzz-"))
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)],
                                cwd=str(REPO), stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    config = fuzz_config(f"http://127.0.0.1:{upstream_port}")
    path = write_config(workdir, config)
    log_path = workdir / "gateway.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the gateway
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(path)],
                               cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(upstream_port, proc=upstream)
        wait_for_port(config["listen"]["port"], proc=gateway, timeout=30)  # type: ignore[index]
        time.sleep(1.0)
        proxy = int(config["listen"]["port"])  # type: ignore[index]
        admin = int(config["admin"]["port"])  # type: ignore[index]
        tally, legit_proxy, legit_admin, samples, seen = uvloop.run(
            run(args, proxy, admin, gateway.pid))
        alive = gateway.poll() is None
    finally:
        for proc in (gateway, upstream):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        log.close()

    text = log_path.read_text(errors="replace")
    levels = collections.Counter(line.split()[2] for line in text.splitlines()
                                 if len(line.split()) > 2 and line[:2] == "20")
    crashed = [line for line in text.splitlines() if "exited with" in line]
    print(f"fuzz: {args.seconds:g}s, {args.clients} clients, seed {args.seed}: "
          f"{tally.sent} mutated requests ({tally.sent / args.seconds:.0f}/s)")
    print(f"worker crashes: {len(crashed)} (worker pids seen: {len(seen)}; "
          f"gateway alive at the end: {alive})")
    for line in crashed[:5]:
        print(f"    {line}")
    for name, result in (("proxy", legit_proxy), ("admin", legit_admin)):
        slices = ", ".join(f"{30 * k}-{30 * k + 30}s {v[0] - v[1]}/{v[0]}"
                           for k, v in sorted(result.slices.items()))
        print(f"legitimate {name} requests ok/sent by 30 s slice: {slices}")
        for failure, count in result.failures.most_common(5):
            print(f"    failure: {failure} x{count}")
    for pid, series in samples.items():
        if len(series) < 2:
            continue
        warm = min(len(series) - 1, 60 // 5 - 1)  # the sample at 60 s
        rss = [r for r, _ in series if r]
        fds = [f for _, f in series if f]
        role = "supervisor" if pid == gateway.pid else "worker"
        print(f"{role} {pid}: RSS {series[warm][0] // 1024} MiB after 60 s -> "
              f"{rss[-1] // 1024} MiB at the end (max {max(rss) // 1024}); open files "
              f"{series[warm][1]} -> {fds[-1]} (max {max(fds)})")
    print(f"log: {len(text.encode())} bytes, {len(text.splitlines())} lines, by level "
          f"{dict(levels)}, tracebacks {text.count('Traceback')}")
    print(f"fuzz answers: {dict(tally.statuses.most_common())}")
    for status, data in tally.samples.items():
        print(f"    a request answered {status}: {data[:300]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
