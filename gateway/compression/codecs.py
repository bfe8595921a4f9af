"""The three content codings, streaming both ways, over their reference libraries: zlib
(gzip, RFC 1952), brotli (RFC 7932) and zstandard (RFC 8878).

Each coder holds one stream's state only, so memory per response is the library's window
(zstd level 3: 1-2 MiB, brotli quality 5: lgwin 22, 4 MiB at most; gzip: 256 KiB), however
long the body (tests/integration/test_compression.py streams 1 GiB).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import brotli  # type: ignore[import-untyped]  # ships no stubs
import zstandard

from gateway.config.model import Encoding


class CorruptBody(Exception):
    """An encoded body that does not decode: the upstream's error, never the client's."""


# Decoding is where a small input becomes a large output: 327 bytes of zstd hold 10 MB of
# zeros, a 64 KiB gzip chunk up to 64 MiB. So a decoder hands its output back in pieces of
# about PIECE bytes (gzip exactly at most; brotli's buffer may overshoot its limit, about 2x
# measured; zstd decodes at most ZSTD_STEP bytes of input per step, whose worst case,
# run-length blocks of 128 KiB from 4 bytes each, is 4 MiB), and the stream writes each
# piece before the next is made: memory per response stays bounded whatever the ratio.
PIECE = 1 << 20
ZSTD_STEP = 128
# A body decoded whole (a stored response, or a small one coded at once) is held at once:
# past this it is refused as the upstream's error rather than allowed to fill memory.
WHOLE_LIMIT = 64 << 20
# RFC 9659 §3: a "zstd" content coding uses a window of at most 8 MB; a larger one is refused
# (and would otherwise be memory the upstream chooses).
ZSTD_WINDOW = 8 << 20


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...   # what was buffered, decodable so far (a stream's chunk)

    def finish(self) -> bytes: ...


class Decoder(Protocol):
    def decompress(self, data: bytes) -> Iterator[bytes]: ...  # pieces of about PIECE

    def finish(self) -> bytes: ...  # raises CorruptBody when the stream ended too early


class _Gzip:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip wrapper

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush()


class _Brotli:
    __slots__ = ("_b",)

    def __init__(self, level: int) -> None:
        self._b = brotli.Compressor(quality=level)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._b.process(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._b.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self._b.finish()
        return out


class _Zstd:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._z.flush()


def encoder(coding: Encoding, level: int) -> Encoder:
    if coding is Encoding.GZIP:
        return _Gzip(level)
    if coding is Encoding.BR:
        return _Brotli(level)
    return _Zstd(level)


def compress(coding: Encoding, level: int, data: bytes) -> bytes:
    """A whole body at once (a stored response's variant)."""
    if coding is Encoding.ZSTD:  # one frame that states its size, so decoders can size up
        return zstandard.ZstdCompressor(level=level).compress(data)
    coder = encoder(coding, level)
    return coder.compress(data) + coder.finish()


class _GunZip:
    __slots__ = ("_z",)

    def __init__(self) -> None:
        self._z = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, as sent

    def decompress(self, data: bytes) -> Iterator[bytes]:
        z = self._z
        if z.eof:
            if data.strip(b"\0"):
                raise CorruptBody("bytes after the end of the gzip stream")
            return
        try:
            while True:
                out = z.decompress(data, PIECE)
                if out:
                    yield out
                data = z.unconsumed_tail
                if not data and len(out) < PIECE:  # a full piece may leave output inside
                    return
        except zlib.error as exc:
            raise CorruptBody(f"gzip: {exc}") from None

    def finish(self) -> bytes:
        if not self._z.eof:
            raise CorruptBody("the gzip stream ended early")
        return b""


class _UnBrotli:
    __slots__ = ("_b",)

    def __init__(self) -> None:
        self._b = brotli.Decompressor()

    def decompress(self, data: bytes) -> Iterator[bytes]:
        b = self._b
        try:
            out: bytes = b.process(data, output_buffer_limit=PIECE)
            while True:
                if out:
                    yield out
                # a full piece may leave output inside, as may a decoder not yet ready for input
                if len(out) < PIECE and b.can_accept_more_data():
                    return
                out = b.process(b"", output_buffer_limit=PIECE)
        except brotli.error as exc:
            raise CorruptBody(f"br: {exc}") from None

    def finish(self) -> bytes:
        if not self._b.is_finished():
            raise CorruptBody("the brotli stream ended early")
        return b""


class _UnZstd:
    __slots__ = ("_z",)

    def __init__(self) -> None:
        self._z = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW).decompressobj()

    def decompress(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        try:
            for at in range(0, len(view), ZSTD_STEP):
                out = self._z.decompress(view[at:at + ZSTD_STEP])
                if out:
                    yield out
        except zstandard.ZstdError as exc:
            raise CorruptBody(f"zstd: {exc}") from None

    def finish(self) -> bytes:
        if not self._z.eof:
            raise CorruptBody("the zstd stream ended early")
        return b""


def decoder(coding: Encoding) -> Decoder:
    if coding is Encoding.GZIP:
        return _GunZip()
    if coding is Encoding.BR:
        return _UnBrotli()
    return _UnZstd()


def decompress(coding: Encoding, data: bytes, limit: int = WHOLE_LIMIT) -> bytes:
    """A whole body at once, refused (CorruptBody) when it decodes to more than `limit`."""
    coder = decoder(coding)
    pieces, size = [], 0
    for piece in coder.decompress(data):
        size += len(piece)
        if size > limit:
            raise CorruptBody(f"it decodes to more than {limit >> 20} MiB held at once")
        pieces.append(piece)
    return b"".join(pieces) + coder.finish()
