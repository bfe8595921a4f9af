"""`gateway demo`: the gateway in front of a small built-in upstream, for a first look.

The demo upstream answers every request with a JSON echo of what reached it (so the flag and
X-Forwarded headers the gateway added are visible) and marks market data cacheable.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from gateway.config import Config


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    payload = {
        "upstream": request.app["name"],
        "method": request.method,
        "path": request.path_qs,
        "headers": {str(k): v for k, v in request.headers.items()},
        "body_bytes": len(body),
        "served_at": time.time(),
    }
    headers = {}
    if request.path.startswith("/api/v1/market/"):
        headers["Cache-Control"] = "public, max-age=10"
    return web.Response(body=orjson.dumps(payload, option=orjson.OPT_INDENT_2),
                        content_type="application/json", headers=headers)


def demo_app(name: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app["name"] = name
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def serve_upstreams(bindings: list[str]) -> None:
    """Child process: one echo server per NAME=HOST:PORT."""
    import asyncio

    async def main() -> None:
        runners = []
        for binding in bindings:
            name, _, address = binding.partition("=")
            host, _, port = address.rpartition(":")
            runner = web.AppRunner(demo_app(name), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, int(port)).start()
            except OSError as exc:
                print(f"gateway demo: demo upstream {name!r} cannot listen on {address}: "
                      f"{exc.strerror}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            runners.append(runner)
        print(f"demo upstreams listening: {', '.join(bindings)}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on (host, port): binding there fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def demo_bindings(config: Config) -> list[tuple[str, str, int]]:
    """(upstream name, host, port) of each upstream on this machine: the demo serves those."""
    out = []
    for name, upstream in config.upstreams.items():
        parts = urlsplit(upstream.url)
        if parts.hostname in ("127.0.0.1", "localhost", "::1"):
            out.append((name, parts.hostname, parts.port or 80))
    return out


def taken_ports(config: Config) -> list[str]:
    """Why the demo cannot start: each port it needs that another program holds."""
    problems = []
    needs = [(config.listen.host, config.listen.port, "the gateway (listen.port; --port)"),
             (config.admin.host, config.admin.port, "the admin listener (admin.port; "
                                                    "--admin-port)")]
    needs += [(host, port, f"demo upstream {name!r} (upstreams.{name}.url); the gateway "
                           "would proxy to whatever holds it")
              for name, host, port in demo_bindings(config)]
    for host, port, what in needs:
        if port and port_taken(host, port):
            problems.append(f"port {port} on {host} is taken by another program: needed by "
                            f"{what}")
    return problems


def with_ports(config: Config, port: int | None, admin_port: int | None) -> Config:
    if port is not None:
        config = dataclasses.replace(config, listen=dataclasses.replace(config.listen,
                                                                        port=port))
    if admin_port is not None:
        config = dataclasses.replace(config, admin=dataclasses.replace(config.admin,
                                                                       port=admin_port))
    return config


def run_demo(config_path: str, config: Config, port: int | None = None,
             admin_port: int | None = None) -> int:
    config = with_ports(config, port, admin_port)
    problems = taken_ports(config)
    if problems:
        for problem in problems:
            print(f"gateway demo: {problem}", file=sys.stderr)
        print("gateway demo: not started", file=sys.stderr)
        return 1
    bindings = [f"{name}={host}:{port}" for name, host, port in demo_bindings(config)]
    child = subprocess.Popen([sys.executable, "-m", "gateway.demo", *bindings])
    try:
        from gateway.server import run_process

        time.sleep(0.5)
        if child.poll() is not None:
            print("gateway demo: the demo upstream could not start (see above); not started",
                  file=sys.stderr)
            return 1
        print(f"try: curl -i http://127.0.0.1:{config.listen.port}/api/v1/market/prices",
              flush=True)
        return run_process(config_path, config)
    finally:
        child.terminate()
        child.wait(timeout=5)


if __name__ == "__main__":
    serve_upstreams(sys.argv[1:])
