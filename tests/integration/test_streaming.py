"""Bodies stream both ways: 1 GiB each way through a gateway process that stays small."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable

import brotli
import psutil
import pytest
import zstandard
from aiohttp import web

from tests.harness import GatewayProcessHandle, Upstream, base_config, client_session

GIB = 1024**3
CHUNK = 1024**2
LIMIT = 64 * 1024**2


async def generated(total: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(total // CHUNK):
        yield block


class PeakRss:
    """Samples a process's resident memory while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            await asyncio.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def test_one_gib_upload_streams(process_factory: Callable[..., GatewayProcessHandle],
                                      upstream: Upstream) -> None:
    received = 0

    async def sink(request: web.Request) -> web.Response:
        nonlocal received
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.json_response({"received": received})

    upstream.on("/upload", sink)
    gw = process_factory(base_config(upstream.url))
    assert gw.proc is not None
    async with client_session() as s:
        with PeakRss(gw.proc.pid) as rss:
            async with s.post(f"{gw.url}/upload", data=generated(GIB)) as r:
                assert r.status == 200
                assert (await r.json())["received"] == GIB
    assert received == GIB
    assert rss.growth < LIMIT, f"gateway RSS grew by {rss.growth / 1024**2:.1f} MiB"


async def test_one_gib_download_streams(process_factory: Callable[..., GatewayProcessHandle],
                                        upstream: Upstream) -> None:
    async def source(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(GIB)})
        await response.prepare(request)
        async for chunk in generated(GIB):
            await response.write(chunk)
        await response.write_eof()
        return response

    upstream.on("/download", source)
    gw = process_factory(base_config(upstream.url))
    assert gw.proc is not None
    total = 0
    async with client_session() as s:
        with PeakRss(gw.proc.pid) as rss:
            async with s.get(f"{gw.url}/download") as r:
                assert r.status == 200 and r.headers["Content-Length"] == str(GIB)
                async for chunk in r.content.iter_chunked(CHUNK):
                    total += len(chunk)
    assert total == GIB
    assert rss.growth < LIMIT, f"gateway RSS grew by {rss.growth / 1024**2:.1f} MiB"


async def test_client_disconnect_cancels_upstream_exchange(
        gateway_factory: Callable[..., object], upstream: Upstream) -> None:
    arrived, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response(text="late")

    upstream.on("/slow", slow)
    gw = await gateway_factory(base_config(upstream.url))  # type: ignore[misc]
    async with client_session() as s:
        task = asyncio.ensure_future(s.get(f"{gw.url}/slow"))  # type: ignore[attr-defined]
        await asyncio.wait_for(arrived.wait(), 5)  # upstream now, however busy the machine
        task.cancel()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_client_leaving_mid_download_closes_the_upstream_side(
        gateway_factory: Callable[..., object], upstream: Upstream) -> None:
    finished = asyncio.Event()
    broke = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(10_000):
                await response.write(b"z" * CHUNK)
            finished.set()
        except (ConnectionResetError, asyncio.CancelledError):
            broke.set()
            raise
        return response

    upstream.on("/endless", endless)
    gw = await gateway_factory(base_config(upstream.url))  # type: ignore[misc]
    async with client_session() as s:
        r = await s.get(f"{gw.url}/endless")  # type: ignore[attr-defined]
        await r.content.readexactly(CHUNK)
        r.close()
    await asyncio.wait_for(broke.wait(), 10)
    assert not finished.is_set()
    async with client_session() as s, s.get(f"{gw.url}/ok") as r:  # type: ignore[attr-defined]
        assert r.status == 200


COMPRESSION = {"encodings": ["zstd", "br", "gzip"], "min_size": "1KiB",
               "level": {"gzip": 6, "br": 5, "zstd": 3}}


def compressing_gateway(process_factory: Callable[..., GatewayProcessHandle],
                        upstream: Upstream, path: str, body: Callable[[], AsyncIterator[bytes]],
                        **fields: str) -> GatewayProcessHandle:
    """A gateway process with compression on, before an upstream that streams `body()` as
    JSON with `fields` at `path`."""
    async def source(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", **fields})
        await response.prepare(request)
        async for chunk in body():
            await response.write(chunk)
        await response.write_eof()
        return response

    upstream.on(path, source)
    config = base_config(upstream.url)
    config["compression"] = COMPRESSION
    gw = process_factory(config)
    assert gw.proc is not None
    return gw


async def test_one_gib_download_is_coded_in_bounded_memory(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream) -> None:
    """Compression streams: the coded body leaves chunk by chunk as the upstream sends it."""
    gw = compressing_gateway(process_factory, upstream, "/download", lambda: generated(GIB))
    assert gw.proc is not None
    decoder = zstandard.ZstdDecompressor().decompressobj()
    total = coded = 0
    async with client_session() as s:
        with PeakRss(gw.proc.pid) as rss:
            async with s.get(f"{gw.url}/download", headers={"Accept-Encoding": "zstd"}) as r:
                assert r.status == 200 and r.headers["Content-Encoding"] == "zstd"
                async for chunk in r.content.iter_chunked(CHUNK):
                    coded += len(chunk)
                    total += len(decoder.decompress(chunk))
    assert total == GIB
    assert coded < GIB // 20
    assert rss.growth < LIMIT, f"gateway RSS grew by {rss.growth / 1024**2:.1f} MiB"


def bomb(coding: str, size: int) -> bytes:
    """`size` zero bytes in `coding`: about a thousandth of it (gzip) or far less."""
    zeros = bytes(CHUNK)
    if coding == "gzip":
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(z.compress(zeros) for _ in range(size // CHUNK)) + z.flush()
    if coding == "br":
        b = brotli.Compressor(quality=1)
        return b"".join(b.process(zeros) for _ in range(size // CHUNK)) + b.finish()
    z = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join(z.compress(zeros) for _ in range(size // CHUNK)) + z.flush()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_a_decompression_bomb_is_decoded_in_bounded_memory(
        coding: str, process_factory: Callable[..., GatewayProcessHandle],
        upstream: Upstream) -> None:
    """An upstream body the client cannot read is decoded for it; one small upstream chunk
    that decodes to 256 MiB comes out in pieces, never whole in the gateway's memory."""
    size = 256 * CHUNK
    payload = bomb(coding, size)
    assert len(payload) < CHUNK  # one upstream chunk

    async def once() -> AsyncIterator[bytes]:
        yield payload

    gw = compressing_gateway(process_factory, upstream, "/bomb", once,
                             **{"Content-Encoding": coding})
    assert gw.proc is not None
    total = 0
    async with client_session() as s:
        with PeakRss(gw.proc.pid) as rss:
            async with s.get(f"{gw.url}/bomb", headers={"Accept-Encoding": "identity"}) as r:
                assert r.status == 200 and "Content-Encoding" not in r.headers
                async for chunk in r.content.iter_chunked(CHUNK):
                    assert not chunk.strip(b"\0")
                    total += len(chunk)
    assert total == size
    assert rss.growth < LIMIT, f"gateway RSS grew by {rss.growth / 1024**2:.1f} MiB"
