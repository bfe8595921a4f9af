"""A fixed-answer HTTP/1.1 server on raw asyncio + uvloop: perfkit's upstream when nginx is absent.

It answers every request with the same small 200, keeps connections alive and skips request
bodies by Content-Length (benchmarks send no chunked bodies). It is not a general server: it
exists only so that the upstream is never the bottleneck of a proxy benchmark.

    python tests/perf/responder.py PORT [BODY]
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


def answer(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class Responder(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = b""
        self.skip = 0  # body bytes of the current request still to discard
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop 0.23's transports no longer subclass asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        out = []
        while True:
            if self.skip:
                taken = min(self.skip, len(self.buffer))
                self.buffer, self.skip = self.buffer[taken:], self.skip - taken
                if self.skip:
                    break
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buffer = self.buffer[:end].lower(), self.buffer[end + 4:]
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                value = head[marker + 17:].split(b"\r\n", 1)[0]
                self.skip = int(value.strip() or b"0")
            out.append(self.response)
        if out:
            self.transport.write(b"".join(out))


async def serve(port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    response = answer(body)
    server = await loop.create_server(lambda: Responder(response), "127.0.0.1", port,
                                      backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "ok").encode()))
