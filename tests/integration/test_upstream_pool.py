"""The upstream keep-alive pool (gateway/wire/h1client.py) over real sockets: reuse, the connection
limit, a keep-alive the upstream closed, streamed bodies, TLS, the whole-exchange deadline."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.harness import base_config, client_session

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class RawUpstream:
    """An HTTP/1.1 server on a raw socket that counts connections and requests and can be
    told to drop a kept-alive connection on its next request without answering."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.drop_next_reused = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if served and self.drop_next_reused:
                    # An idle keep-alive timed out on our side just as the request came.
                    self.drop_next_reused = False
                    return
                self.requests.append(head + body)
                served += 1
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(RESPONSE)
                await writer.drain()
        finally:
            self.open_now -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def raw_upstream() -> object:
    upstream = RawUpstream()
    yield upstream
    await upstream.stop()


async def test_sequential_requests_share_one_connection(gateway_factory: object,
                                                        raw_upstream: RawUpstream) -> None:
    gw = await gateway_factory(base_config(await raw_upstream.start()))  # type: ignore[operator]
    async with client_session() as s:
        for _ in range(5):
            async with s.get(f"{gw.url}/x") as r:
                assert r.status == 200 and await r.read() == b"ok"
    assert len(raw_upstream.requests) == 5
    assert raw_upstream.connections == 1


async def test_connection_limit_queues_instead_of_failing(gateway_factory: object) -> None:
    upstream = RawUpstream(delay=0.05)
    config = base_config(await upstream.start())
    config["upstreams"]["api"]["max_connections"] = 2
    gw = await gateway_factory(config)  # type: ignore[operator]
    try:
        async with client_session() as s:
            async def one() -> int:
                async with s.get(f"{gw.url}/x") as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one() for _ in range(8)))
        assert statuses == [200] * 8
        assert upstream.most_open <= 2
        assert len(upstream.requests) == 8
    finally:
        await upstream.stop()


async def test_idempotent_request_retried_once_when_a_kept_alive_connection_was_closed(
        gateway_factory: object, raw_upstream: RawUpstream) -> None:
    gw = await gateway_factory(base_config(await raw_upstream.start()))  # type: ignore[operator]
    async with client_session() as s:
        async with s.get(f"{gw.url}/first") as r:
            assert r.status == 200
        raw_upstream.drop_next_reused = True
        async with s.get(f"{gw.url}/second") as r:
            assert r.status == 200 and await r.read() == b"ok"
    assert [req.split(b" ")[1] for req in raw_upstream.requests] == [b"/first", b"/second"]
    assert raw_upstream.connections == 2


async def test_post_not_replayed_on_a_closed_keep_alive(gateway_factory: object,
                                                        raw_upstream: RawUpstream) -> None:
    gw = await gateway_factory(base_config(await raw_upstream.start()))  # type: ignore[operator]
    async with client_session() as s:
        async with s.get(f"{gw.url}/first") as r:
            assert r.status == 200
        raw_upstream.drop_next_reused = True
        async with s.post(f"{gw.url}/order", data=b"buy 1") as r:
            assert r.status == 502
            assert "closed the connection before answering" in orjson.loads(
                await r.read())["detail"]
    assert len(raw_upstream.requests) == 1  # the POST reached no handler twice


async def test_chunked_request_body_framed_for_the_upstream(gateway_factory: object,
                                                            raw_upstream: RawUpstream) -> None:
    gw = await gateway_factory(base_config(await raw_upstream.start()))  # type: ignore[operator]

    async def parts():  # type: ignore[no-untyped-def]
        yield b"hello "
        yield b"world"

    async with client_session() as s, s.post(f"{gw.url}/up", data=parts()) as r:
        # The raw upstream reads Content-Length bodies only: a chunked request reaches it
        # as a head with Transfer-Encoding, then the chunks.
        assert r.status in (200, 502)
    head = raw_upstream.requests[0]
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert b"Content-Length" not in head


async def test_body_only_post_gets_content_length_zero(gateway_factory: object,
                                                       raw_upstream: RawUpstream) -> None:
    gw = await gateway_factory(base_config(await raw_upstream.start()))  # type: ignore[operator]
    async with client_session() as s, s.post(f"{gw.url}/ping") as r:
        assert r.status == 200
    assert b"\r\nContent-Length: 0\r\n" in raw_upstream.requests[0]


async def test_whole_exchange_deadline_covers_a_slow_body(gateway_factory: object) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = base_config(f"http://127.0.0.1:{port}")
    config["upstreams"]["api"]["timeout"] = "300ms"
    gw = await gateway_factory(config)  # type: ignore[operator]
    try:
        async with client_session() as s, s.get(f"{gw.url}/slow") as r:
            assert r.status == 200  # the head was out before the deadline
            started = asyncio.get_running_loop().time()
            with pytest.raises(aiohttp.ClientPayloadError):  # cut: the body cannot finish
                await asyncio.wait_for(r.read(), 3)
            assert asyncio.get_running_loop().time() - started < 2
    finally:
        server.close()


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_https_upstream_certificate_is_verified(gateway_factory: object,
                                                      self_signed: tuple[Path, Path]) -> None:
    """A self-signed upstream certificate is refused with a 502 that says why."""
    import ssl

    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    gw = await gateway_factory(base_config(f"https://localhost:{port}"))  # type: ignore[operator]
    try:
        async with client_session() as s, s.get(f"{gw.url}/x") as r:
            assert r.status == 502
            detail = orjson.loads(await r.read())["detail"]
            assert "unreachable" in detail and "CERTIFICATE_VERIFY_FAILED" in detail
    finally:
        server.close()
