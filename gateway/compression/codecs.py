"""The three content codings, streaming both ways, over their reference libraries: zlib
(gzip, RFC 1952), brotli (RFC 7932) and zstandard (RFC 8878).

Each coder holds one stream's state only, so memory per response is the library's window
(zstd level 3: 1-2 MiB, brotli quality 5: lgwin 22, 4 MiB at most; gzip: 256 KiB), however
long the body (tests/integration/test_compression.py streams 1 GiB).
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli  # type: ignore[import-untyped]  # ships no stubs
import zstandard

from gateway.config.model import Encoding


class CorruptBody(Exception):
    """An encoded body that does not decode: the upstream's error, never the client's."""


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...   # what was buffered, decodable so far (a stream's chunk)

    def finish(self) -> bytes: ...


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...

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

    def decompress(self, data: bytes) -> bytes:
        if self._z.eof:
            if data.strip(b"\0"):
                raise CorruptBody("bytes after the end of the gzip stream")
            return b""
        try:
            return self._z.decompress(data)
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

    def decompress(self, data: bytes) -> bytes:
        try:
            out: bytes = self._b.process(data)
        except brotli.error as exc:
            raise CorruptBody(f"br: {exc}") from None
        return out

    def finish(self) -> bytes:
        if not self._b.is_finished():
            raise CorruptBody("the brotli stream ended early")
        return b""


class _UnZstd:
    __slots__ = ("_z",)

    def __init__(self) -> None:
        self._z = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes) -> bytes:
        try:
            return self._z.decompress(data)
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


def decompress(coding: Encoding, data: bytes) -> bytes:
    coder = decoder(coding)
    return coder.decompress(data) + coder.finish()
