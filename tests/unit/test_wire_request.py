"""The proxy listener's requests (gateway/wire/request.py) and handlers run in their
connection's task (gateway/wire/server.py run_handlers_inline)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser

from gateway.wire.request import SHADOWED, GatewayRequest, request_factory
from gateway.wire.server import run_handlers_inline
from tests.harness import free_port

HEADS = {
    "HEAD": b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n",
    "HTTP/1.0": b"GET /x?a=%2F HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    "a body": b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab",
    "close": b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    "absolute-form": b"GET http://other/x HTTP/1.1\r\nHost: h\r\n\r\n",
}


class _Protocol:
    ssl_context = None
    peername = ("192.0.2.7", 40000)
    sockname = ("127.0.0.1", 8080)
    transport = None


@pytest.mark.parametrize("head", list(HEADS))
async def test_a_gateway_request_reads_as_aiohttps_own(head: str) -> None:
    loop = asyncio.get_running_loop()
    (message, payload), = HttpRequestParser(BaseProtocol(loop), loop, 2**16
                                            ).feed_data(HEADS[head])[0]
    protocol: Any = _Protocol()
    writer: Any = object()
    plain = web.BaseRequest(message, payload, protocol, writer, None, loop)  # type: ignore
    ours = request_factory(loop)(message, payload, protocol, writer, None)  # type: ignore
    assert isinstance(ours, GatewayRequest)
    for name in SHADOWED:
        assert getattr(ours, name) == getattr(plain, name), name
    again = ours.clone(remote="198.51.100.1", scheme="https")
    assert (again.remote, again.scheme, type(again)) == ("198.51.100.1", "https", GatewayRequest)


async def _tasks_of_two_requests(inline: bool) -> list[asyncio.Task[Any] | None]:
    loop = asyncio.get_running_loop()
    if inline:
        run_handlers_inline(loop)
    seen: list[asyncio.Task[Any] | None] = []

    async def handler(request: web.BaseRequest) -> web.Response:
        seen.append(asyncio.current_task())
        return web.Response(text="ok")

    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:  # one keep-alive connection
            for _ in range(2):
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    assert await response.text() == "ok"
    finally:
        await runner.cleanup()
    return seen


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="aiohttp starts the task eagerly")
async def test_handlers_run_in_their_connections_task() -> None:
    first, second = await _tasks_of_two_requests(inline=True)
    assert first is second is not None


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="aiohttp starts the task eagerly")
async def test_without_it_each_request_has_a_task_of_its_own() -> None:
    first, second = await _tasks_of_two_requests(inline=False)
    assert first is not second


async def test_other_coroutines_still_get_tasks() -> None:
    loop = asyncio.get_running_loop()
    run_handlers_inline(loop)
    run_handlers_inline(loop)  # once is enough: the factory is not wrapped twice
    factory: Any = loop.get_task_factory()
    assert factory is None or getattr(factory, "runs_handlers_inline", False)
    task = loop.create_task(asyncio.sleep(0, result="done"))
    assert isinstance(task, asyncio.Task)
    assert await task == "done"
