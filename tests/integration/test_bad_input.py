"""Bad input gets a clear answer and never a crash: 400, 431, 413, and configs that never start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from tests.harness import REPO, InProcessGateway, Upstream, base_config, client_session


async def raw_exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def test_malformed_request_line_is_400(gateway: InProcessGateway) -> None:
    answer = await raw_exchange(gateway.config.listen.port, b"GARBAGE\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"400"


async def test_malformed_header_is_400(gateway: InProcessGateway) -> None:
    answer = await raw_exchange(gateway.config.listen.port,
                                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"400"
    # The gateway still serves afterwards.
    async with client_session() as s, s.get(f"{gateway.url}/ok") as r:
        assert r.status == 200


async def test_header_section_over_limit_is_431(gateway_factory: Callable[..., object],
                                                upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["listen"]["max_header_size"] = "4KiB"
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    async with client_session() as s:
        headers = {f"X-Filler-{i}": "v" * 200 for i in range(30)}  # ~6.5 KiB in all
        async with s.get(f"{gw.url}/x", headers=headers) as r:
            assert r.status == 431
            assert r.headers["Content-Type"] == "application/problem+json"
            assert "4096" in orjson.loads(await r.read())["detail"]
        async with s.get(f"{gw.url}/x", headers={"X-Small": "v"}) as r:
            assert r.status == 200
    assert upstream.count() == 1


async def test_body_over_route_limit_is_413(gateway_factory: Callable[..., object],
                                            upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["routes"][0]["max_body"] = "1KiB"
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]

    async def chunked_body() -> object:
        for _ in range(4):
            yield b"y" * 512

    async with client_session() as s:
        async with s.post(f"{gw.url}/up", data=b"x" * 2048) as r:
            assert r.status == 413
            assert "1024" in orjson.loads(await r.read())["detail"]
        assert upstream.count() == 0  # refused before anything went upstream
        async with s.post(f"{gw.url}/up", data=chunked_body()) as r:
            assert r.status == 413
        async with s.post(f"{gw.url}/up", data=b"x" * 1024) as r:
            assert r.status == 200


async def test_expect_continue_over_limit_is_413_without_100(
        gateway_factory: Callable[..., object], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["routes"][0]["max_body"] = 100
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    answer = await raw_exchange(gw.config.listen.port,
                                b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                                b"Expect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")


def test_config_with_errors_never_starts(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams: {api: {url: 'http://127.0.0.1:1'}}\nroutes:\n"
                    "  - {name: x, match: {path_prefix: /}, upstream: nope}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.returncode == 1
    assert "routes[0].upstream: unknown upstream 'nope'" in result.stderr
    assert "not started" in result.stderr


async def test_upstream_answering_garbage_is_502(gateway_factory: Callable[..., object]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw: InProcessGateway = await gateway_factory(  # type: ignore[misc]
        base_config(f"http://127.0.0.1:{port}"))
    async with client_session() as s, s.get(f"{gw.url}/x") as r:
        assert r.status == 502
    server.close()


async def test_upstream_lying_about_length_cuts_the_connection(
        gateway_factory: Callable[..., object], upstream: Upstream) -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()
        return response

    upstream.on("/short", short)
    gw: InProcessGateway = await gateway_factory(base_config(upstream.url))  # type: ignore[misc]
    async with client_session() as s:
        async with s.get(f"{gw.url}/short") as r:
            assert r.status == 200
            try:
                await r.read()
            except Exception as exc:  # noqa: BLE001 - any payload error is the right outcome
                assert "Payload" in type(exc).__name__ or "Disconnected" in type(exc).__name__
            else:
                raise AssertionError("a truncated body must not look complete")
        async with s.get(f"{gw.url}/fine") as r:
            assert r.status == 200
