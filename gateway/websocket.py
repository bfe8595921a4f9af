"""WebSocket upgrades proxied both ways: text, binary, ping/pong and close codes."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from gateway.problem import problem
from gateway.proxy import UpstreamPool

# Fields the client library negotiates itself on the upstream leg.
_HANDSHAKE = ("Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
              "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Content-Length")


async def proxy_websocket(request: web.BaseRequest, pool: UpstreamPool, upstream: str,
                          path_qs: str, headers: CIMultiDict[str],
                          response_headers: list[tuple[str, str]], request_id: str
                          ) -> web.StreamResponse:
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                 if p.strip()]
    for name in _HANDSHAKE:
        headers.popall(name, None)
    url = pool.url(upstream, path_qs)
    session = pool.websocket_session(upstream)
    try:
        upstream_ws = await session.ws_connect(url, headers=headers, protocols=protocols,
                                               autoping=False, autoclose=False,
                                               max_msg_size=0)
    except aiohttp.WSServerHandshakeError as exc:
        return problem(502, f"upstream {upstream!r} refused the WebSocket upgrade "
                       f"({exc.status})", request_id)
    except TimeoutError:
        return problem(504, f"upstream {upstream!r} did not answer the upgrade in time",
                       request_id)
    except (aiohttp.ClientError, OSError) as exc:
        return problem(502, f"upstream {upstream!r} is unreachable: {exc}", request_id)

    client_ws = web.WebSocketResponse(
        protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
        autoping=False, autoclose=False, max_msg_size=0,
    )
    for name, value in response_headers:
        client_ws.headers[name] = value
    await client_ws.prepare(request)

    async def pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        async for msg in source:
            if msg.type is WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await sink.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                await sink.pong(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                reason = msg.extra.encode() if isinstance(msg.extra, str) else b""
                await sink.close(code=source.close_code or 1000, message=reason)
                return
            else:  # ERROR, CLOSED
                break
        if not sink.closed:
            await sink.close(code=source.close_code or 1011)

    tasks = [asyncio.ensure_future(pump(client_ws, upstream_ws)),
             asyncio.ensure_future(pump(upstream_ws, client_ws))]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # Let the other direction see the close handshake through, briefly.
        if pending:
            await asyncio.wait(pending, timeout=5)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await upstream_ws.close()
        await client_ws.close()
    return client_ws
