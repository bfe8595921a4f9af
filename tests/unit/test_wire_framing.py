"""gateway/wire/framing.py's connection on aiohttp's C parser, fed bytes directly: where a
response ends (RFC 9112 §6.3), what past the end does, what stays an error, and one parser
reading the responses of successive exchanges."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ServerDisconnectedError

from gateway.wire import problems
from gateway.wire.framing import Connection

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def framed(loop: asyncio.AbstractEventLoop, head_only: bool = False) -> Connection:
    conn = Connection(loop)
    conn.begin(head_only=head_only)
    return conn


def messages(conn: Connection) -> list[tuple[int, bytes]]:
    found = []
    while conn._heads:
        message, payload = conn._heads.popleft()
        found.append((message.code, payload if isinstance(payload, bytes) else
                      payload.read_nowait() if payload.is_eof() else b"?"))
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
        conn = framed(loop)
        for data in reads:
            conn.data_received(data)
        assert conn.failure is None
        found = messages(conn)
        assert found[-1] == (200, b"hello")
        assert all(100 <= code < 200 for code, _ in found[:-1])
        assert conn.excess and conn.should_close
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")  # unasked-for
        assert not conn._heads and conn.failure is None
    finally:
        loop.close()


def test_a_complete_response_alone_keeps_the_connection() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        conn.data_received(HEAD + b"hel")
        conn.data_received(b"lo")
        assert messages(conn) == [(200, b"hello")]
        assert not conn.excess and not conn.should_close
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
        conn = framed(loop)
        conn.data_received(data)
        assert conn.failure is not None and not conn._heads  # the exchange fails: 502
        assert conn.should_close
    finally:
        loop.close()


def test_a_body_that_breaks_in_a_later_read_ends_with_an_error() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        conn.data_received(b"loXX\r\n0\r\n\r\n")
        [(message, body)] = list(conn._heads)
        assert message.code == 200 and body.exception() is not None
        assert conn.failure is None and conn.should_close
    finally:
        loop.close()


def test_head_response_ends_after_its_head() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop, head_only=True)
        conn.data_received(HEAD + b"hello")  # a body a HEAD answer must not have
        assert [code for code, _ in messages(conn)] == [200]
        assert conn.excess and conn.failure is None
    finally:
        loop.close()


def test_bytes_kept_for_a_reparse_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.wire import framing as module

    monkeypatch.setattr(module, "KEEP_AT_MOST", 64)
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        for _ in range(4):  # interim answers past the bound: nothing is kept any more
            conn.data_received(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        conn.data_received(HEAD + b"helloGARBAGE")
        assert conn.failure is not None  # no re-parse without the bytes: an error
    finally:
        loop.close()


def test_one_parser_reads_the_responses_of_successive_exchanges() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        bodied = conn._parser
        for body in (b"hello", b"world"):
            conn.begin(head_only=False)
            conn.data_received(HEAD)  # the body in a later read: the parser with bodies
            conn.data_received(body)
            assert messages(conn) == [(200, body)]
            assert not conn.should_close
        assert conn._parser is bodied
        bodiless = []
        for body in (b"hello", b"world"):  # whole in one read: the head alone is parsed
            conn.begin(head_only=False)
            conn.data_received(HEAD + body)
            assert messages(conn) == [(200, body)]
            assert not conn.should_close
            bodiless.append(conn._bodiless)
        assert bodiless[0] is bodiless[1] is not None
        conn.begin(head_only=True)  # a HEAD answer has no body: the bodiless parser
        conn.data_received(HEAD)
        assert [code for code, _ in messages(conn)] == [200]
        assert conn._parser is bodiless[0] and not conn.should_close
    finally:
        loop.close()


def test_bytes_between_exchanges_mark_the_connection_for_closing() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        conn.data_received(HEAD + b"hello")
        assert messages(conn) == [(200, b"hello")] and not conn.should_close
        conn.data_received(b"HTTP/1.1 200 OK\r\n")  # unasked-for, while the connection idles
        assert conn.excess and conn.should_close
    finally:
        loop.close()


def test_a_connection_lost_mid_body_ends_the_body_with_an_error() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        conn.data_received(HEAD + b"he")
        [(message, body)] = list(conn._heads)
        conn.connection_lost(None)
        assert message.code == 200 and body.exception() is not None
    finally:
        loop.close()


def test_a_connection_lost_before_the_head_fails_the_exchange_as_unanswered() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        conn.data_received(b"HTTP/1.1 200")
        conn.connection_lost(None)
        assert conn.arrival() is None  # nothing to wait for: the failure is there
        with pytest.raises(ServerDisconnectedError):
            conn.head()
    finally:
        loop.close()


@pytest.mark.parametrize(("data", "closes"), [
    (HEAD + b"hello", False),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 5\r\n\r\nhello", True),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False),
])
def test_a_whole_response_in_one_read_comes_as_bytes(data: bytes, closes: bool) -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        conn.data_received(data)
        [(message, body)] = list(conn._heads)
        assert message.code in (200, 404)
        assert isinstance(body, bytes) and body == data[data.index(b"\r\n\r\n") + 4:]
        assert conn.should_close is closes and not conn.excess
    finally:
        loop.close()


@pytest.mark.parametrize("data", [
    HEAD + b"hello" + HEAD + b"hello",  # a second response nobody asked for
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n" + HEAD + b"hello",
])
def test_anything_but_one_whole_response_is_read_by_the_parser_with_bodies(data: bytes) -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = framed(loop)
        conn.data_received(data)
        assert not any(isinstance(body, bytes) for _, body in conn._heads)
    finally:
        loop.close()
