"""Requests the parser refuses: problem+json answers, HTTP versions, and a bounded log.

Raw sockets, because no HTTP library sends these bytes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.harness import InProcessGateway, Upstream, base_config, client_session


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, return all the gateway writes before it closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def problem_of(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), head
    return dict(orjson.loads(body))


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.0"])
async def test_version_other_than_1_0_or_1_1_is_505(gateway: InProcessGateway, upstream: Upstream,
                                                    version: bytes) -> None:
    """RFC 9110 §15.6.6 (505 HTTP Version Not Supported), answered with an HTTP/1.x line."""
    answer = await exchange(gateway.config.listen.port,
                            b"GET /ok " + version + b"\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.")
    assert status_of(answer) == 505
    assert version.decode() in problem_of(answer)["detail"]
    assert upstream.count() == 0


@pytest.mark.parametrize("line", [b"GET /ok HTTP/0.9\r\nHost: x\r\n\r\n", b"GET /ok\r\n\r\n"])
async def test_http_0_9_is_400(gateway: InProcessGateway, upstream: Upstream,
                               line: bytes) -> None:
    answer = await exchange(gateway.config.listen.port, line)
    assert status_of(answer) == 400
    assert "0.9" in problem_of(answer)["detail"]
    assert upstream.count() == 0


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /ok HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"G\x00T /ok HTTP/1.1\r\n\r\n",
])
async def test_parser_error_is_problem_json_400(gateway: InProcessGateway, upstream: Upstream,
                                                data: bytes) -> None:
    answer = await exchange(gateway.config.listen.port, data)
    assert status_of(answer) == 400
    body = problem_of(answer)
    assert body["status"] == 400
    assert "GARBAGE" not in body["detail"]  # the client's bytes are never echoed
    assert upstream.count() == 0


async def test_one_header_line_over_parser_limit_is_431(gateway: InProcessGateway) -> None:
    """RFC 6585 §5: one field line longer than the parser takes (4x max_header_size)."""
    line = b"X-Huge: " + b"h" * (4 * gateway.config.listen.max_header_size + 10)
    answer = await exchange(gateway.config.listen.port,
                            b"GET /ok HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
    assert status_of(answer) == 431
    assert problem_of(answer)["status"] == 431


async def test_request_line_over_limit_is_414(gateway: InProcessGateway) -> None:
    """RFC 9112 §3: a request-target longer than the server parses is 414."""
    target = b"/" + b"t" * (gateway.config.listen.max_header_size + 10)
    answer = await exchange(gateway.config.listen.port,
                            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 414
    assert problem_of(answer)["status"] == 414


async def _bad_requests_metric(admin_url: str, reason: str) -> float:
    async with client_session() as s, s.get(f"{admin_url}/metrics") as r:
        text = await r.text()
    found = re.search(rf'^gateway_bad_requests_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


async def test_bad_requests_log_one_line_each_within_a_per_second_budget(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    config = base_config(upstream.url)
    config["logging"]["bad_request_lines_per_second"] = 3
    gw: InProcessGateway = await gateway_factory(config)
    before = await _bad_requests_metric(gw.admin_url, "header")
    caplog.set_level(logging.WARNING)
    caplog.clear()
    for _ in range(30):
        answer = await exchange(gw.config.listen.port,
                                b"GET /ok HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert status_of(answer) == 400
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # 30 refusals within well under two seconds: at most two windows of 3 lines.
    assert 1 <= len(lines) <= 6
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
    assert all(r.name == "gateway.edge" for r in lines)
    assert await _bad_requests_metric(gw.admin_url, "header") - before == 30
    async with client_session() as s, s.get(f"{gw.url}/ok") as r:  # still serving
        assert r.status == 200


class RawUpstream:
    """An upstream that records the exact bytes it receives and answers 200 once they stop."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            self.received += head + await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def test_encoded_request_body_is_forwarded_as_it_came(
        gateway_factory: Callable[..., Any]) -> None:
    """RFC 9110 §8.4: Content-Encoding is the sender's; a proxy forwards the coded bytes."""
    import gzip

    raw = RawUpstream()
    gw: InProcessGateway = await gateway_factory(base_config(await raw.start()))
    coded = gzip.compress(b"x" * 1000)
    answer = await exchange(gw.config.listen.port, (
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(coded)) + coded)
    assert status_of(answer) == 200
    assert raw.received.endswith(b"\r\n\r\n" + coded)
    assert raw.server is not None
    raw.server.close()


@pytest.mark.parametrize("split", [False, True], ids=["with-head", "after-head"])
async def test_malformed_chunked_body_is_problem_json_400(
        gateway: InProcessGateway, caplog: pytest.LogCaptureFixture, split: bool) -> None:
    """Met by the parser with the head, or by the handler reading the body: same answer."""
    caplog.set_level(logging.WARNING)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.config.listen.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n")
    if split:
        await writer.drain()
        await asyncio.sleep(0.2)
    writer.write(b"zz\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status_of(answer) == 400
    assert problem_of(answer)["detail"] == "the request body is malformed"
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
