"""gateway/wire/framing.py on aiohttp's own protocol and C parser, fed bytes directly: where a
response ends (RFC 9112 §6.3), what past the end does, and what stays an error."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.client_proto import ResponseHandler

from gateway.wire import problems
from gateway.wire.framing import Framing, frame_response

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def framed(loop: asyncio.AbstractEventLoop, head_only: bool = False
           ) -> tuple[ResponseHandler, Framing]:
    conn = ResponseHandler(loop)
    return conn, frame_response(conn, skip_payload=head_only, read_bufsize=2**16,
                                max_line_size=8190, max_field_size=8190)


def messages(conn: ResponseHandler) -> list[tuple[int, bytes]]:
    found = []
    while len(conn):
        message, payload = conn._buffer.popleft()[0]
        found.append((message.code, payload.read_nowait() if payload.is_eof() else b"?"))
    return found


def test_the_framing_probe_passes_on_the_installed_aiohttp() -> None:
    assert [p for p in problems() if "framing" in p] == []


@pytest.mark.parametrize("reads", [
    [HEAD + b"helloGARBAGE"],
    [HEAD[:10], HEAD[10:] + b"hel", b"loGARBAGE"],
    [HEAD + b"hello\r\nHTTP/1.1 200 OK\r\n"],
    [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + HEAD + b"helloGARBAGE"],
    [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n", HEAD + b"hello X"],
])
def test_rfc9112_6_3_bytes_past_content_length_are_dropped_and_close_the_connection(
        reads: list[bytes]) -> None:
    loop = asyncio.new_event_loop()
    try:
        conn, framing = framed(loop)
        for data in reads:
            conn.data_received(data)
        assert conn.exception() is None
        found = messages(conn)
        assert found[-1] == (200, b"hello")
        assert all(100 <= code < 200 for code, _ in found[:-1])
        assert framing.excess and conn.should_close
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")  # unasked-for
        assert len(conn) == 0 and conn.exception() is None
    finally:
        loop.close()


def test_a_complete_response_alone_keeps_the_connection() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn, framing = framed(loop)
        conn.data_received(HEAD + b"hel")
        conn.data_received(b"lo")
        assert messages(conn) == [(200, b"hello")]
        assert not framing.excess and not conn.should_close
    finally:
        loop.close()


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nBad Header\r\n\r\nhello",
    b"NOT HTTP AT ALL\r\n\r\n",
])
def test_a_response_broken_before_its_end_is_still_an_error(data: bytes) -> None:
    loop = asyncio.new_event_loop()
    try:
        conn, framing = framed(loop)
        conn.data_received(data)
        assert conn.exception() is not None  # the exchange fails: 502, as it did
        assert framing.final is None or not framing.final.is_eof() or \
            framing.final.exception() is not None
    finally:
        loop.close()


def test_head_response_ends_after_its_head() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn, framing = framed(loop, head_only=True)
        conn.data_received(HEAD + b"hello")  # a body a HEAD answer must not have
        assert [code for code, _ in messages(conn)] == [200]
        assert framing.excess and conn.exception() is None
    finally:
        loop.close()


def test_bytes_kept_for_a_reparse_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.wire import framing as module

    monkeypatch.setattr(module, "KEEP_AT_MOST", 64)
    loop = asyncio.new_event_loop()
    try:
        conn, _ = framed(loop)
        for _ in range(4):  # interim answers past the bound: nothing is kept any more
            conn.data_received(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        conn.data_received(HEAD + b"helloGARBAGE")
        assert conn.exception() is not None  # no re-parse without the bytes: an error
    finally:
        loop.close()
