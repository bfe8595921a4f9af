"""WebSocket upgrades proxied both ways: text, binary, close codes, subprotocols."""

from __future__ import annotations

import aiohttp
from aiohttp import WSMsgType, web

from tests.harness import InProcessGateway, Upstream, client_session


async def echo_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("chat.v2",))
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            if msg.data == "close-me":
                await ws.close(code=4001, message=b"asked to")
                break
            await ws.send_str(f"echo:{msg.data}")
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data[::-1])
    return ws


async def test_text_and_binary_both_ways(gateway: InProcessGateway, upstream: Upstream) -> None:
    upstream.on("/ws", echo_ws)
    async with client_session() as s:
        async with s.ws_connect(f"{gateway.url}/ws", protocols=("chat.v2",)) as ws:
            assert ws.protocol == "chat.v2"
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=5)) == "echo:hello"
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await ws.receive_bytes(timeout=5)) == b"\x02\x01\x00"
            big = "x" * 200_000
            await ws.send_str(big)
            assert (await ws.receive_str(timeout=5)) == "echo:" + big


async def test_upstream_close_code_reaches_client(gateway: InProcessGateway,
                                                  upstream: Upstream) -> None:
    upstream.on("/ws", echo_ws)
    async with client_session() as s, s.ws_connect(f"{gateway.url}/ws") as ws:
        await ws.send_str("close-me")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert ws.close_code == 4001 or msg.data == 4001


async def test_client_close_code_reaches_upstream(gateway: InProcessGateway,
                                                  upstream: Upstream) -> None:
    seen: list[int | None] = []

    async def record(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        seen.append(ws.close_code)
        return ws

    upstream.on("/ws", record)
    async with client_session() as s:
        ws = await s.ws_connect(f"{gateway.url}/ws")
        await ws.close(code=4002, message=b"bye")
    for _ in range(100):
        if seen:
            break
        import asyncio

        await asyncio.sleep(0.02)
    assert seen == [4002]


async def test_upstream_refusing_upgrade_is_502(gateway: InProcessGateway,
                                                upstream: Upstream) -> None:
    async def plain(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets here")

    upstream.on("/ws", plain)
    async with client_session() as s:
        try:
            await s.ws_connect(f"{gateway.url}/ws")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 502
        else:
            raise AssertionError("the upgrade should have been refused")


async def test_strip_prefix_applies_to_upgrades(gateway_factory: object,
                                                upstream: Upstream) -> None:
    from tests.harness import base_config

    upstream.on("/ws", echo_ws)
    config = base_config(upstream.url, routes=[
        {"name": "sock", "match": {"path_prefix": "/live/"}, "upstream": "api",
         "strip_prefix": "/live"}])
    gw = await gateway_factory(config)  # type: ignore[operator]
    async with client_session() as s, s.ws_connect(f"{gw.url}/live/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "echo:hi"
    assert upstream.hits[-1].path == "/ws"
