"""Interim answers and over-long bodies from the upstream, through the real gateway.

The upstream is a raw asyncio socket server writing exact bytes (an HTTP library would
neither send a 103 nor more body than its Content-Length); the client is a raw socket too,
so the test sees every head the gateway writes, interim ones included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.harness import InProcessGateway, base_config

Factory = Callable[..., Awaitable[InProcessGateway]]
Script = list[bytes | float]  # bytes to write, or seconds to wait, in order

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
FINAL = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=60\r\n"
         b"Content-Length: 5\r\n\r\nhello")


class ScriptedUpstream:
    """Answers every request with `script`, counting connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests += 1
                for step in self.script:
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def config(url: str, cached: bool) -> dict[str, Any]:
    conf = base_config(url)
    if cached:
        conf["cache"] = {"memory_max": "1MiB"}
        conf["routes"] = [{"name": "c", "match": {"path_prefix": "/"}, "upstream": "api",
                           "cache": {"ttl": "30s"}}]
    return conf


async def exchange(gw: InProcessGateway, path: str = "/x", version: str = "1.1"
                   ) -> list[tuple[bytes, bytes]]:
    """Send one GET on a fresh connection; every head the gateway wrote, each with the body
    that followed it (by Content-Length; empty for an interim head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.config.listen.port)
    try:
        writer.write(f"GET {path} HTTP/{version}\r\nHost: h\r\n\r\n".encode())
        await writer.drain()
        answers: list[tuple[bytes, bytes]] = []
        while True:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status = int(head.split(b" ", 2)[1])
            if 100 <= status < 200:
                answers.append((head, b""))
                continue
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answers.append((head, await asyncio.wait_for(reader.readexactly(length), 5)))
            return answers
    finally:
        writer.close()


@pytest.fixture
async def scripted() -> Any:
    made: list[ScriptedUpstream] = []

    async def make(script: Script) -> str:
        upstream = ScriptedUpstream(script)
        made.append(upstream)
        return await upstream.start()

    make.made = made  # type: ignore[attr-defined]
    yield make
    for upstream in made:
        await upstream.stop()


# ---------------------------------------------------------------- RFC 9110 §15.2

@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
async def test_rfc9110_15_2_interim_103_relayed_before_the_final_response(
        gateway_factory: Factory, scripted: Any, cached: bool) -> None:
    url = await scripted([EARLY_HINTS, FINAL])
    gw = await gateway_factory(config(url, cached))
    answers = await exchange(gw)
    assert [head.split(b"\r\n", 1)[0] for head, _ in answers] == [
        b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"]
    assert b"\r\nLink: </style.css>; rel=preload\r\n" in answers[0][0]
    assert answers[1][1] == b"hello"


async def test_rfc9110_15_2_interim_never_stored(gateway_factory: Factory,
                                                  scripted: Any) -> None:
    url = await scripted([EARLY_HINTS, FINAL])
    gw = await gateway_factory(config(url, cached=True))
    await exchange(gw)
    answers = await exchange(gw)  # a hit: the stored final answer alone
    assert len(answers) == 1
    head, body = answers[0]
    assert head.startswith(b"HTTP/1.1 200 OK") and b"X-Cache: HIT" in head
    assert body == b"hello" and b"Link:" not in head
    assert scripted.made[0].requests == 1


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
async def test_rfc9110_15_2_no_interim_to_an_http10_client(
        gateway_factory: Factory, scripted: Any, cached: bool) -> None:
    url = await scripted([EARLY_HINTS, FINAL])
    gw = await gateway_factory(config(url, cached))
    answers = await exchange(gw, version="1.0")
    assert len(answers) == 1
    assert answers[0][0].split(b" ", 2)[1] == b"200" and answers[0][1] == b"hello"


# ---------------------------------------------------------------- RFC 9112 §6.3

OVERLONG = {
    # In the same write as the response: the parser used to fail on the response whole.
    "same-read": [FINAL + b"EXTRA BYTES"],
    # What looks like the start of a next response, cut short (parses without an error).
    "response-like": [FINAL + b"HTTP/1.1 200 OK\r\nContent-Le"],
    # The head first, then the body with the excess.
    "after-head": [FINAL[:-5], 0.05, b"helloEXTRA"],
    # The response whole, the excess a moment later.
    "later": [FINAL, 0.05, b"EXTRA"],
    # After interim answers, in the same write as the final one.
    "after-103": [EARLY_HINTS + FINAL + b"EXTRA"],
}


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("script", OVERLONG.values(), ids=OVERLONG.keys())
async def test_rfc9112_6_3_excess_body_discarded_and_connection_not_reused(
        gateway_factory: Factory, scripted: Any, script: Script, cached: bool) -> None:
    url = await scripted(script)
    gw = await gateway_factory(config(url, cached))
    for path in ("/a", "/b"):  # distinct paths: the second is a miss too
        answers = await exchange(gw, path)
        head, body = answers[-1]
        assert head.startswith(b"HTTP/1.1 200 OK"), head
        assert body == b"hello"
        await asyncio.sleep(0.1)  # any late excess has arrived
    upstream = scripted.made[0]
    assert upstream.requests == 2
    assert upstream.connections == 2  # the first connection was closed, not reused
