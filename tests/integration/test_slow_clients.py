"""Slow and idle clients: header, idle and body deadlines, and the per-process connection cap.

Raw sockets against the real gateway, with deadlines of half a second so the suite stays fast.
Every wait on the gateway is bounded: without the deadlines these tests time out instead of
hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import orjson
import yaml
from aiohttp import web

from tests.harness import InProcessGateway, Upstream, base_config, client_session

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
GET = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"


async def _gateway(factory: Callable[..., Any], upstream: Upstream, **listen: Any
                   ) -> InProcessGateway:
    config = base_config(upstream.url)
    config["listen"].update({"header_timeout": "0.5s", "idle_timeout": "0.5s",
                             "body_timeout": "0.5s", **listen})
    gateway: InProcessGateway = await factory(config)
    return gateway


async def _connect(gateway: InProcessGateway) -> Conn:
    return await asyncio.open_connection("127.0.0.1", gateway.config.listen.port)


async def _until_closed(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the gateway writes until it closes the connection (bounded)."""
    return await asyncio.wait_for(reader.read(), within)


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, await asyncio.wait_for(reader.readexactly(length), 5)


def _problem(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower()
    return dict(orjson.loads(body))


async def test_connection_that_sends_nothing_is_closed_silently(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream)
    reader, writer = await _connect(gateway)
    assert await _until_closed(reader) == b""  # no 408 for a client that never asked
    writer.close()


async def test_partial_head_past_header_timeout_is_408(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream)
    reader, writer = await _connect(gateway)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert _problem(answer)["status"] == 408
    assert upstream.count() == 0
    writer.close()


async def test_trickled_head_gets_no_more_than_header_timeout(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    """Slowloris: a byte every 0.1 s keeps the socket busy but never resets the deadline."""
    gateway = await _gateway(gateway_factory, upstream)
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", gateway.config.listen.port)) as sock:
        sock.setblocking(False)

        async def receive_all() -> bytes:
            got = b""
            while chunk := await loop.sock_recv(sock, 65536):
                got += chunk
            return got

        answer = asyncio.ensure_future(receive_all())
        head = GET.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 40 + b"\r\n\r\n")
        for byte in head:  # ~6 s to send it all, if the gateway let it
            if answer.done():
                break
            with contextlib.suppress(ConnectionError):
                await loop.sock_sendall(sock, bytes([byte]))
            await asyncio.sleep(0.1)
        assert (await asyncio.wait_for(answer, 5)).startswith(b"HTTP/1.1 408 ")
    assert upstream.count() == 0


async def test_idle_keepalive_connection_is_closed_silently(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream)
    reader, writer = await _connect(gateway)
    writer.write(GET)
    status, _ = await _response(reader)
    assert status == 200
    assert await _until_closed(reader) == b""
    writer.close()


async def test_keepalive_connection_that_starts_a_head_gets_408(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream, idle_timeout="5s")
    reader, writer = await _connect(gateway)
    writer.write(GET)
    assert (await _response(reader))[0] == 200
    writer.write(b"GET /ok HTTP/1.1\r\nHo")
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert upstream.count() == 1
    writer.close()


async def test_body_pause_past_body_timeout_is_408(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream)
    reader, writer = await _connect(gateway)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert "body" in _problem(answer)["detail"]
    writer.close()


async def test_body_timeout_bounds_each_pause_not_the_whole_body(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream)
    reader, writer = await _connect(gateway)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for _ in range(8):  # 0.8 s in all, never more than 0.1 s between two reads
        writer.write(b"b")
        await writer.drain()
        await asyncio.sleep(0.1)
    status, body = await _response(reader)
    assert status == 200
    assert orjson.loads(body)["body_bytes"] == 8
    writer.close()


async def test_client_waiting_for_100_continue_is_not_a_stalled_body(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    """RFC 9110 §10.1.1: the client may hold the body until 100 Continue; the body clock
    starts when the gateway asks for it."""
    gateway = await _gateway(gateway_factory, upstream)
    reader, writer = await _connect(gateway)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    await asyncio.sleep(0.1)
    writer.write(b"body")
    status, _ = await _response(reader)
    assert status == 200
    writer.close()


async def test_past_max_connections_the_next_waits_until_one_closes(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream, max_connections=20,
                             header_timeout="10s", idle_timeout="10s")
    held = [await _connect(gateway) for _ in range(20)]
    for reader, writer in held:
        writer.write(GET)
        assert (await _response(reader))[0] == 200

    reader, writer = await _connect(gateway)  # the kernel completes it; nobody accepts it
    writer.write(GET)
    waiting = asyncio.ensure_future(_response(reader))
    await asyncio.sleep(0.5)
    assert not waiting.done()

    # The connections already open keep working meanwhile.
    first_reader, first_writer = held[0]
    first_writer.write(GET)
    assert (await _response(first_reader))[0] == 200

    held[-1][1].close()
    status, _ = await waiting
    assert status == 200
    for _, w in [*held[:-1], (reader, writer)]:
        w.close()


async def test_two_workers_and_the_supervisors_admin_listener_keep_the_deadlines(
        process_factory: Callable[..., Any], upstream: Upstream) -> None:
    """Each worker and the supervisor's admin listener: 408 for a stalled head, problem+json
    for a malformed one."""
    config = base_config(upstream.url)
    config["listen"].update({"header_timeout": "0.5s", "idle_timeout": "0.5s"})
    handle = process_factory(config, workers=2)
    for port in (handle.config.listen.port, handle.config.admin.port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        assert (await _until_closed(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n")
        answer = await _until_closed(reader)
        assert answer.split(b" ", 2)[1] == b"400"
        assert _problem(answer)["status"] == 400
        writer.close()


async def test_reload_applies_new_deadlines_to_the_listener(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gateway = await _gateway(gateway_factory, upstream, header_timeout="30s")
    config = yaml.safe_load(gateway.config_path.read_text())
    config["listen"]["header_timeout"] = "0.5s"
    gateway.config_path.write_text(yaml.safe_dump(config))
    async with client_session() as s, s.post(f"{gateway.admin_url}/admin/reload") as r:
        assert r.status == 200
    reader, writer = await _connect(gateway)
    writer.write(b"GET /ok HTTP/1.1\r\nHo")
    assert (await _until_closed(reader)).startswith(b"HTTP/1.1 408 ")
    writer.close()


async def test_body_stall_after_the_response_started_cuts_the_connection(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    """The upstream answers before the body is in; a 408 can no longer be sent, so the
    connection is cut and the client sees a response that never completes."""
    release = asyncio.Event()

    async def early_answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 10
        await response.prepare(request)
        await response.write(b"start")
        await release.wait()  # the rest only once the test saw what the gateway did
        await response.write(b"-end")
        return response

    upstream.on("/early", early_answer)
    gateway = await _gateway(gateway_factory, upstream)
    reader, writer = await _connect(gateway)
    writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            got += chunk
    except ConnectionResetError:
        pass
    finally:
        release.set()
        writer.close()
    assert got.startswith(b"HTTP/1.1 200 ")
    assert got.endswith(b"start")  # 5 of the 10 announced bytes: visibly truncated
