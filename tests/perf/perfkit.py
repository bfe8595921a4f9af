"""Building blocks for benchmark scripts: servers to measure, load generators, fair comparison.

A benchmark here always compares against a reference measured in the same run on the same
machine (absolute figures on a shared 2-core box mean little). The pieces:

- `Lab`: a context manager that starts processes and stops every one of them at exit:
  `lab.upstream()` (nginx answering a fixed small body; a raw-asyncio responder if nginx cannot
  be had), `lab.nginx_proxy(url)`, `lab.naive_proxy(url)`, `lab.gateway(config_dict)`.
- `wrk(url, ...)` (closed loop: throughput) and `open_loop(url, rate, ...)` (fixed rate:
  latency below saturation), both returning a `LoadResult`.
- `interleaved({...}, repeat)`: runs A B C C B A ... so drift on a shared machine hits every
  contender alike; `medians()` and `table()` turn the runs into a printed comparison.
- `simultaneous({...}, rounds)`: the simultaneous A/B, for changes of a few microseconds
  per request: all servers pinned to the same core and loaded AT THE SAME TIME, so a
  neighbour's burst hits both alike; `paired()` gives the per-round CPU differences.
  `snapshot()` + `checkout()` start both sides the same way (tests/perf/ab.py).
- `LAYOUT`: which cores the load side and the server under test are pinned to.

Example:

    with Lab() as lab:
        up = lab.upstream()
        gw = lab.gateway(gateway_config(up.url))
        runs = interleaved({"direct": lambda: wrk(up.url), "gateway": lambda: wrk(gw.url)}, 3)
        print(table(medians(runs), ratios=[("gateway", "direct")]))
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.harness import GatewayProcessHandle, base_config, free_port, wait_for_port, write_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYTHON = sys.executable


def say(message: str) -> None:
    print(f"[perfkit] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tools

def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None)


def _apt_install(packages: Sequence[str]) -> bool:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say(f"cannot install {' '.join(packages)}: need root and apt-get "
            f"(install them yourself: apt-get install -y {' '.join(packages)})")
        return False
    say(f"installing Debian packages {' '.join(packages)} with apt-get (one time) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", *packages]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # the package lists may be missing or stale: refresh once
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        say(f"apt-get install {' '.join(packages)} failed:\n{done.stderr[-2000:]}")
    return done.returncode == 0


@dataclass(frozen=True)
class Tools:
    wrk: str
    nginx: str | None  # None: upstream falls back to responder.py, no nginx comparison


_TOOLS: Tools | None = None


def tools() -> Tools:
    """wrk and nginx, installed from Debian's packages when missing (wrk is required)."""
    global _TOOLS
    if _TOOLS is None:
        wrk, nginx = _find("wrk"), _find("nginx")
        missing = [pkg for pkg, found in (("wrk", wrk), ("nginx-light", nginx)) if not found]
        if missing and _apt_install(missing):
            wrk, nginx = _find("wrk"), _find("nginx")
        if nginx is None and _apt_install(["nginx"]):  # nginx-light is not in every release
            nginx = _find("nginx")
        if wrk is None:
            raise RuntimeError("wrk is required: apt-get install -y wrk")
        if nginx is None:
            say("nginx unavailable: the upstream is tests/perf/responder.py and there is no "
                "nginx comparison")
        _TOOLS = Tools(wrk=wrk, nginx=nginx)
    return _TOOLS


# ---------------------------------------------------------------- cores

@dataclass(frozen=True)
class Layout:
    """Load generator and upstream share `load`; the server under test has `server` alone."""

    load: frozenset[int] | None
    server: frozenset[int] | None

    def describe(self) -> str:
        if self.load is None or self.server is None:
            return "no CPU pinning (a single core is available)"
        return (f"pinned with taskset/sched_setaffinity: load generator + upstream on cores "
                f"{sorted(self.load)}, the server under test on cores {sorted(self.server)}")


def _layout() -> Layout:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return Layout(None, None)
    half = len(cores) // 2
    return Layout(frozenset(cores[:half]), frozenset(cores[half:]))


LAYOUT = _layout()


def taskset(cpus: Iterable[int] | None) -> list[str]:
    """A command prefix pinning a new process (and its threads) to `cpus`."""
    if cpus is None or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus))]


def pin_tree(pid: int, cpus: Iterable[int] | None) -> None:
    """Pin a running process, all its threads and its child processes (`taskset -a -p`)."""
    if cpus is None:
        return
    wanted = set(cpus)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(tid), wanted)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            pin_tree(int(child), wanted)


def _tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    if children.exists():
        for child in children.read_text().split():
            found += _tree(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by a process and its children (from /proc)."""
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def with_cpu(pid: int, run: Callable[[], LoadResult]) -> LoadResult:
    """Run a measurement and add the server's CPU microseconds per request (`cpu_us`).

    On a shared machine throughput moves with the neighbours' load; the CPU a server spends
    per request moves much less, so it is the steadier figure for before/after comparisons.
    """
    before = cpu_seconds(pid)
    result = run()
    spent = cpu_seconds(pid) - before
    cpu_us = spent * 1e6 / result.requests if result.requests else float("nan")
    return replace(result, extra={**result.extra, "cpu_us": cpu_us})


# ---------------------------------------------------------------- servers

@dataclass
class Service:
    """A started server: its URL, its process id, and how to stop it."""

    name: str
    url: str
    pid: int
    stop: Callable[[], None]
    cpus: frozenset[int] | None = None


NGINX_HEAD = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""


class Lab:
    """Starts servers in a temporary directory and stops all of them on exit."""

    def __init__(self, layout: Layout = LAYOUT) -> None:
        self.layout = layout
        self.dir = Path(tempfile.mkdtemp(prefix="gw-perf-"))
        os.chmod(self.dir, 0o755)  # nginx workers may run as another user
        self.services: list[Service] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception as error:  # noqa: BLE001 - keep stopping the others
                say(f"stopping {service.name}: {error}")
        self.services.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- generic

    def spawn(self, name: str, cmd: Sequence[str], port: int, cpus: frozenset[int] | None,
              env: Mapping[str, str] | None = None, cwd: Path = REPO) -> Service:
        """Run `cmd` pinned to `cpus` and wait until it listens on `port`."""
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen([*taskset(cpus), *cmd], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})), cwd=str(cwd))

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()

        try:
            wait_for_port(port, proc=proc)
        except (RuntimeError, TimeoutError):
            stop()
            raise RuntimeError(f"{name} did not start:\n"
                               f"{(self.dir / f'{name}.log').read_text(errors='replace')}"
                               ) from None
        service = Service(name, f"http://127.0.0.1:{port}", proc.pid, stop, cpus)
        self.services.append(service)
        return service

    def _nginx(self, name: str, server_block: str, port: int,
               cpus: frozenset[int] | None) -> Service:
        nginx = tools().nginx
        assert nginx is not None
        work = self.dir / name
        work.mkdir()
        os.chmod(work, 0o755)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = work / "nginx.conf"
        conf.write_text(NGINX_HEAD.format(user=user, dir=work) + server_block + "}\n")
        cmd = [nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf)]
        return self.spawn(name, cmd, port, cpus)

    # -- the contenders

    def upstream(self, body: str = "hello from the upstream\n", name: str = "upstream",
                 cpus: frozenset[int] | str | None = "load") -> Service:
        """A fast upstream answering every request with a fixed 200 (nginx, else responder.py).

        It shares the load generator's cores by default, so the server under test keeps its
        own core; pass `cpus=` to place it elsewhere.
        """
        where = self.layout.load if cpus == "load" else cpus
        assert not isinstance(where, str)
        port = free_port()
        if tools().nginx is None:
            return self.spawn(name, [PYTHON, str(HERE / "responder.py"), str(port), body],
                              port, where)
        quoted = body.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        block = f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{quoted}"; }}
    }}
"""
        return self._nginx(name, block, port, where)

    def nginx_proxy(self, upstream_url: str, name: str = "nginx") -> Service | None:
        """nginx as a plain reverse proxy: 1 worker, keep-alive upstream pool, no access log."""
        if tools().nginx is None:
            return None
        port = free_port()
        target = upstream_url.removeprefix("http://").rstrip("/")
        block = f"""    upstream backend {{ server {target}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
"""
        return self._nginx(name, block, port, self.layout.server)

    def naive_proxy(self, upstream_url: str, name: str = "naive") -> Service:
        """The ~60-line aiohttp proxy (tests/perf/naive_proxy.py)."""
        port = free_port()
        return self.spawn(name, [PYTHON, str(HERE / "naive_proxy.py"), str(port), upstream_url],
                          port, self.layout.server)

    def gateway(self, config: dict[str, Any], name: str = "gateway", workers: int = 1,
                env: Mapping[str, str] | None = None, source: Path | None = None) -> Service:
        """`python -m gateway run` from a config dict (see `gateway_config`), pinned.

        `source`: run the gateway package of another checkout (e.g. `git archive main`
        unpacked in a temporary directory) to compare before and after in one run.
        """
        path = write_config(self.dir, config, f"{name}.yaml")
        if source is not None:
            cmd = [PYTHON, "-m", "gateway", "run", "--config", str(path),
                   "--workers", str(workers)]
            return self.spawn(name, cmd, config["listen"]["port"], self.layout.server,
                              {**(env or {}), "PYTHONPATH": str(source)}, cwd=source)
        handle = GatewayProcessHandle(path, workers=workers, env=dict(env or {})).start()
        assert handle.proc is not None
        pin_tree(handle.proc.pid, self.layout.server)

        def stop() -> None:
            handle.stop()

        service = Service(name, handle.url, handle.proc.pid, stop, self.layout.server)
        self.services.append(service)
        return service


def drive_keepalive(port: int, make_request: Callable[[int], bytes], count: int, first: int,
                    connections: int = 4, statuses: tuple[bytes, ...] = (b"200",)) -> None:
    """`count` requests (the n-th is `make_request(n)`) over `connections` keep-alive
    sockets, one in flight on each; every answer must have a status in `statuses` and a
    Content-Length (the answer to a HEAD ends with its head)."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    for start in range(0, count, connections):
        heads = []
        for i, sock in enumerate(socks):
            sent = make_request(first + start + i)
            heads.append(sent.startswith(b"HEAD "))
            sock.sendall(sent)
        for sock, head_only in zip(socks, heads, strict=True):
            data = b""
            while True:
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head) if _ else None
                if length is not None and (head_only or len(body) >= int(length.group(1))):
                    break
                data += sock.recv(65536)
            assert data[9:12] in statuses, data[:200]
    for sock in socks:
        sock.close()


def instructions_per_request(config: dict[str, Any], drive: Callable[[str, int, int], None],
                             labels: Sequence[str], requests: int, warm: int = 400,
                             source: Path | None = None, rounds: int = 2,
                             keep: Path | None = None) -> dict[str, float]:
    """Instructions per request of a gateway process under callgrind, per label.

    `drive(label, count, first)` sends `count` requests of kind `label` to the gateway on
    `config`'s port and waits for their answers. Each label is counted `rounds` times with
    the counters zeroed before and dumped after, and the least is kept. Counting is
    repeatable whatever the neighbours do (wrk's rps moved by +-15% between rounds on the
    shared machine); it leaves out the kernel's work and cache misses, so it is a guide to
    a gap, not a throughput figure. `source`: the gateway package of another checkout.
    PYTHONHASHSEED is fixed, so processes of different revisions hash (and probe their
    dicts) alike: with random seeds two runs of the same code differed by up to ~1%.
    `keep`: a directory that receives each label's last callgrind dump
    (`<label>.callgrind`), for callgrind_annotate.
    """
    cwd = source or REPO
    with tempfile.TemporaryDirectory() as out:
        path = write_config(Path(out), config, "callgrind.yaml")
        return instructions_of_command(
            [PYTHON, "-m", "gateway", "run", "--config", str(path)], config["listen"]["port"],
            drive, labels, requests, warm=warm, rounds=rounds, keep=keep, cwd=cwd,
            env={"PYTHONPATH": str(cwd)})


def instructions_of_command(cmd: Sequence[str], port: int,
                            drive: Callable[[str, int, int], None], labels: Sequence[str],
                            requests: int, warm: int = 400, rounds: int = 2,
                            keep: Path | None = None, cwd: Path = REPO,
                            env: Mapping[str, str] | None = None) -> dict[str, float]:
    """`instructions_per_request` for any server command listening on `port` (the naive
    proxy, say), counted the same way."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}/cg.out", *cmd], cwd=cwd,
            env=dict(os.environ, PYTHONHASHSEED="0", **(env or {})),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def control(*args: str) -> None:
            subprocess.run(["callgrind_control", *args, str(proc.pid)], capture_output=True,
                           check=False)

        counts: dict[str, list[float]] = {label: [] for label in labels}
        try:
            wait_for_port(port, timeout=120, proc=proc)
            for label in labels:
                drive(label, warm, 0)  # plans, memos, connections
            for round_ in range(rounds):
                for label in labels:
                    control("-z")  # counters to zero, count only while the requests run
                    control("-i", "on")
                    drive(label, requests, 1000 + round_ * requests)
                    control("-i", "off")
                    control("-d")  # write the counts out
                    time.sleep(1)
                    newest = max(Path(out).glob("cg.out*"), key=lambda p: p.stat().st_mtime)
                    totals = [line for line in newest.read_text().splitlines()
                              if line.startswith(("summary:", "totals:"))]
                    counts[label].append(int(totals[-1].split()[1]) / requests)
                    if keep is not None:
                        keep.mkdir(parents=True, exist_ok=True)
                        name = re.sub(r"[^\w.-]+", "_", label)
                        shutil.copy(newest, keep / f"{name}.callgrind")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {label: min(values) for label, values in counts.items()}


def gateway_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """tests.harness.base_config for benchmarks: warnings only, no access log."""
    config = base_config(upstream_url, **overrides)
    config["logging"] = {"level": "warning", "access_log": False}
    return config


def checkout(rev: str, into: Path) -> Path:
    """`git archive REV` of this repository unpacked under `into`: a `source=` for `gateway`."""
    target = into / f"src-{rev.replace('/', '_')}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def snapshot(into: Path, name: str = "worktree") -> Path:
    """This working tree's `gateway` package (uncommitted edits included) copied under `into`.

    A `source=` for `gateway`, so a candidate starts exactly as a `checkout` baseline does:
    an A/A run (tests/perf/ab.py --baseline HEAD on a clean tree) showed a gateway started
    through the test harness reading ~2.5 us/req below the same code started from a source
    directory, enough to fake a small win. (Two processes of the same code still differ
    by up to ~4 us/req: see tests/perf/ab.py.)
    """
    target = into / f"src-{name}"
    shutil.copytree(REPO / "gateway", target / "gateway",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target


# ---------------------------------------------------------------- load

@dataclass(frozen=True)
class LoadResult:
    """One measurement. Latencies in milliseconds; `rate` set for open-loop runs."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int = 0  # connect/read/write errors and timeouts
    non2xx: int = 0
    rate: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk(url: str, *, duration: float = 5.0, connections: int = 64, threads: int = 1,
        headers: Mapping[str, str] | None = None, lua: str = "",
        cpus: frozenset[int] | str | None = "load", timeout: float = 10.0) -> LoadResult:
    """Closed-loop throughput with wrk. `lua` may define `request`/`response` (not `done`)."""
    where = LAYOUT.load if cpus == "load" else cpus
    assert not isinstance(where, str)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua + WRK_DONE)
    cmd = [*taskset(where), tools().wrk, "-t", str(threads), "-c", str(connections),
           "-d", f"{max(1, round(duration))}s", "--timeout", f"{timeout:g}s", "-s", script.name]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    try:
        done = subprocess.run([*cmd, url], capture_output=True, text=True, check=False,
                              timeout=duration + 60)
    finally:
        os.unlink(script.name)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line[8:])
    return LoadResult(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        requests=data["requests"], errors=data["errors"], non2xx=data["non2xx"],
        extra={"p90_ms": data["p90_us"] / 1000, "max_ms": data["max_us"] / 1000},
    )


def open_loop(url: str, rate: float, *, duration: float = 5.0, connections: int = 64,
              headers: Mapping[str, str] | None = None, method: str = "GET",
              cpus: frozenset[int] | str | None = "load") -> LoadResult:
    """Latency at a fixed request rate (tests/perf/openloop.py, in its own process)."""
    where = LAYOUT.load if cpus == "load" else cpus
    assert not isinstance(where, str)
    cmd = [*taskset(where), PYTHON, str(HERE / "openloop.py"), url, "--rate", f"{rate:g}",
           "--duration", f"{duration:g}", "--connections", str(connections), "--method", method]
    for name, value in (headers or {}).items():
        cmd += ["--header", f"{name}: {value}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"openloop failed ({done.returncode}):\n{done.stderr}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    if data["behind_ms"] > 5:
        say(f"open-loop client ran {data['behind_ms']:.1f} ms behind its schedule at "
            f"{rate:g}/s: the client, not the server, may be limiting; lower the rate")
    return LoadResult(
        rps=data["achieved_rate"], p50_ms=data["p50_ms"], p99_ms=data["p99_ms"],
        requests=data["ok"], errors=data["errors"], non2xx=data["non2xx"], rate=rate,
        extra={"p90_ms": data["p90_ms"], "max_ms": data["max_ms"],
               "behind_ms": data["behind_ms"]},
    )


# ---------------------------------------------------------------- comparison

def interleaved(runs: Mapping[str, Callable[[], LoadResult]], repeat: int = 3,
                warmup: Callable[[str], None] | None = None, pause: float = 0.5
                ) -> dict[str, list[LoadResult]]:
    """Each run `repeat` times, A B C then C B A and so on; `warmup(name)` first, once each.

    The order turns round each time because going second is not neutral here: an A/A run
    (the same route measured as 'first' and 'second', 9 rounds of 5 s, 2026-11-27) read the
    second at 0.95x the first by median rps, though the median of the per-round ratios was
    0.997.
    """
    if warmup is not None:
        for name in runs:
            warmup(name)
    results: dict[str, list[LoadResult]] = {name: [] for name in runs}
    for round_no in range(repeat):
        order = list(runs) if round_no % 2 == 0 else list(runs)[::-1]
        for name in order:
            result = runs[name]()
            results[name].append(result)
            say(f"round {round_no + 1}/{repeat} {name}: {result.rps:,.0f} rps, "
                f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                + (f", {result.extra['cpu_us']:.0f} cpu us/req" if "cpu_us" in result.extra
                   else "")
                + (f", {result.errors} errors" if result.errors else "")
                + (f", {result.non2xx} non-2xx" if result.non2xx else ""))
            time.sleep(pause)
    return results


def simultaneous(services: Mapping[str, Service], rounds: int = 7, duration: float = 3.0,
                 connections: int = 32, path: str = "/bench", lua: str = "",
                 alternate: Mapping[str, Service] | None = None
                 ) -> dict[str, list[LoadResult]]:
    """The simultaneous A/B: every service loaded by its own wrk at the same time, `rounds` times.

    On this shared 2-core machine a neighbour's burst moves one measurement by more than a
    few-microsecond change, and interleaving (A then B) leaves each side its own bursts.
    Started with `Lab.gateway(..., source=...)` every gateway is pinned to the same server
    core, so loading them together makes them share that core and whatever else lands on
    it; compare the CPU microseconds per request (`with_cpu`) of the same round with
    `paired`. wrk processes start in alternating order each round. Each service gets a
    one-second warm-up first.

    `alternate`: the same names served by other processes (two gateways of one config with
    their routes swapped), loaded instead of `services` every other round. Two processes
    of the same code pinned together are not alike (two A/A runs here: one process served
    1.4%, then 0.3% more than its twin, not the same one of the pair each time); swapping
    cancels that. wrk's start order then flips every two rounds, so each process starts
    first as often with either name: use a multiple of 4.
    """
    for service in [*services.values(), *(alternate or {}).values()]:
        wrk(service.url + path, duration=1, connections=connections, lua=lua)
    results: dict[str, list[LoadResult]] = {name: [] for name in services}
    names = list(services)
    for round_no in range(rounds):
        done: dict[str, LoadResult] = {}
        these = services if alternate is None or round_no % 2 == 0 else alternate

        def run(name: str, done: dict[str, LoadResult] = done,
                these: Mapping[str, Service] = these) -> None:
            load = partial(wrk, these[name].url + path, duration=duration,
                           connections=connections, lua=lua)
            done[name] = with_cpu(these[name].pid, load)

        flip = round_no if alternate is None else round_no // 2
        order = names if flip % 2 == 0 else names[::-1]
        threads = [threading.Thread(target=run, args=(name,)) for name in order]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        missing = [name for name in names if name not in done]
        if missing:
            raise RuntimeError(f"no measurement for {missing} in round {round_no + 1}")
        for name in names:
            results[name].append(done[name])
        say(f"round {round_no + 1}/{rounds}: " + " | ".join(
            f"{name} {done[name].rps:,.0f} rps {done[name].extra['cpu_us']:.1f} us/req"
            for name in names))
    return results


def rps_ratios(results: Mapping[str, Sequence[LoadResult]], a: str, b: str) -> list[float]:
    """Per-round rps ratios a / b (of `interleaved` or `simultaneous` rounds)."""
    return [x.rps / y.rps for x, y in zip(results[a], results[b], strict=True)]


def paired(results: Mapping[str, Sequence[LoadResult]], a: str, b: str) -> list[float]:
    """Per-round CPU us/req differences a - b (of `interleaved` or `simultaneous` rounds)."""
    return [x.extra["cpu_us"] - y.extra["cpu_us"] for x, y in zip(results[a], results[b],
                                                                   strict=True)]


def median(results: Sequence[LoadResult]) -> LoadResult:
    """Median of each figure separately; errors summed over the repeats."""
    return replace(
        results[0],
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        non2xx=sum(r.non2xx for r in results),
        extra={k: statistics.median(r.extra.get(k, float("nan")) for r in results)
               for k in results[0].extra},
    )


def medians(runs: Mapping[str, Sequence[LoadResult]]) -> dict[str, LoadResult]:
    return {name: median(results) for name, results in runs.items() if results}


def spread(results: Sequence[LoadResult]) -> str:
    low, high = min(r.rps for r in results), max(r.rps for r in results)
    return f"{low:,.0f}-{high:,.0f}"


def table(rows: Mapping[str, LoadResult], ratios: Sequence[tuple[str, str]] = (),
          runs: Mapping[str, Sequence[LoadResult]] | None = None, title: str = "") -> str:
    """A plain-text table of medians, then `a/b` ratios of rps and latencies."""
    lines = [title] if title else []
    cpu = all("cpu_us" in r.extra for r in rows.values())
    header = f"{'':<12} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'non2xx':>7}"
    if cpu:
        header += f" {'cpu us/req':>10}"
    if runs is not None:
        header += f"  {'rps range':>15}"
    lines += [header, "-" * len(header)]
    for name, r in rows.items():
        line = (f"{name:<12} {r.rps:>10,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                f"{r.errors:>7} {r.non2xx:>7}")
        if cpu:
            line += f" {r.extra['cpu_us']:>10.0f}"
        if runs is not None:
            line += f"  {spread(runs[name]):>15}"
        lines.append(line)
    for a, b in ratios:
        if a in rows and b in rows:
            x, y = rows[a], rows[b]
            line = (f"{a}/{b}: rps x{x.rps / y.rps:.2f}, p50 x{x.p50_ms / y.p50_ms:.2f}, "
                    f"p99 x{x.p99_ms / y.p99_ms:.2f}")
            if cpu:
                line += f", cpu/req x{x.extra['cpu_us'] / y.extra['cpu_us']:.2f}"
            lines.append(line)
    return "\n".join(lines)
