"""`gateway demo`: the gateway in front of a small built-in upstream, for a first look.

The demo upstream answers every request with a JSON echo of what reached it (so the flag and
X-Forwarded headers the gateway added are visible) and marks market data cacheable.
"""

from __future__ import annotations

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
            await web.TCPSite(runner, host, int(port)).start()
            runners.append(runner)
        print(f"demo upstreams listening: {', '.join(bindings)}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_demo(config_path: str, config: Config) -> int:
    bindings = []
    for name, upstream in config.upstreams.items():
        parts = urlsplit(upstream.url)
        if parts.hostname in ("127.0.0.1", "localhost", "::1"):
            bindings.append(f"{name}={parts.hostname}:{parts.port or 80}")
    child = subprocess.Popen([sys.executable, "-m", "gateway.demo", *bindings])
    try:
        from gateway.server import run_process

        time.sleep(0.5)
        print(f"try: curl -i http://127.0.0.1:{config.listen.port}/api/v1/market/prices",
              flush=True)
        return run_process(config_path, config)
    finally:
        child.terminate()
        child.wait(timeout=5)


if __name__ == "__main__":
    serve_upstreams(sys.argv[1:])
