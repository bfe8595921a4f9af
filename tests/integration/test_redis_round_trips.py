"""One Redis round trip per request: a route with rate limits and the L2 cache sends its
decision and its L2 lookup in one write, before any reply, and waits for no other reply.

Counted honestly by a proxy between the gateway and a real redis-server that records every
chunk the gateway writes (parsed into commands) and can hold Redis's replies back: a command
that reaches Redis while every reply is held was not waiting for one. Without holding, a
sequential client would show the same commands; held, it could not send its second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import hiredis
import pytest
import redis.asyncio

from gateway.luascripts import load_script
from tests.harness import InProcessGateway, RedisServer, Upstream, free_port
from tests.integration.test_cache import cached_config, counting, get

HOST = "shop.example"
RULES = {
    "per_user": {"algorithm": "sliding_window", "scope": "user", "limit": 1000, "window": "1m"},
    "per_tenant": {"algorithm": "token_bucket", "scope": "tenant", "limit": 1000,
                   "window": "1m"},
    "per_ip": {"algorithm": "fixed_window", "scope": "ip", "limit": 1000, "window": "1m"},
}
USER = {"X-User-Id": "u1", "X-Tenant-Id": "t1"}


class HoldingProxy:
    """A TCP proxy to Redis recording the commands of every chunk the client writes; while
    `holding`, Redis's replies on the pipe (the connection carrying rate-limit decisions)
    wait in the proxy until `release()`. Other connections (pub/sub, admin-path calls) flow
    freely."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = free_port()
        # Per chunk received from the client's connection that carries rate-limit decisions
        # (the pipe): its commands' names; `others`: those of every other connection.
        self.chunks: list[list[str]] = []
        self.others: list[str] = []
        self.replies = 0  # complete replies Redis sent on the pipe (held or passed on)
        self.holding = False
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        held, self._held = self._held, []
        for writer, data in held:
            writer.write(data)

    def commands(self) -> list[str]:
        return [name for chunk in self.chunks for name in chunk]

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        pipe = [False]
        replies = asyncio.get_running_loop().create_task(self._replies(up_reader, writer,
                                                                       pipe))
        self._tasks.add(replies)
        parser = hiredis.Reader()
        try:
            while data := await reader.read(1 << 20):
                parser.feed(data)
                names = []
                while (command := parser.gets()) is not False:
                    names.append(_name(command))
                pipe[0] = pipe[0] or "EVALSHA ratelimit" in names
                if pipe[0]:
                    self.chunks.append(names)
                else:
                    self.others.extend(names)
                self.changed.set()
                up_writer.write(data)
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            up_writer.close()
            writer.close()

    async def _replies(self, up_reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, pipe: list[bool]) -> None:
        parser = hiredis.Reader()
        while data := await up_reader.read(1 << 20):
            parser.feed(data)
            while parser.gets() is not False:
                self.replies += pipe[0]
            self.changed.set()
            if self.holding and pipe[0]:
                self._held.append((writer, data))
            else:
                writer.write(data)


SCRIPTS = {load_script(name).sha: name
           for name in ("ratelimit", "cache_store_variant", "cache_tag_url")}


def _name(command: Any) -> str:
    """A command's name; an EVALSHA's by its script: 'EVALSHA ratelimit'."""
    name = str(command[0].decode()).upper()
    if name == "EVALSHA":
        sha = command[1].decode()
        return f"EVALSHA {SCRIPTS.get(sha, sha)}"
    return name


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[HoldingProxy]:
    started = await HoldingProxy(redis_server.port).start()
    yield started
    started.release()
    await started.close()


def limited_cached_config(upstream: Upstream, redis_url: str) -> dict[str, Any]:
    config = cached_config(upstream.url)
    config["redis"] = {"url": redis_url, "timeout": "2s", "key_prefix": "rt:",
                       "failure_mode": "open"}
    config["cache"]["redis"] = True
    config["rate_limits"] = RULES
    config["routes"][0]["rate_limits"] = list(RULES)
    return config


async def stored(server: RedisServer, count: int) -> None:
    """Until L2 holds `count` URLs."""
    client = redis.asyncio.Redis(port=server.port)
    try:
        for _ in range(200):
            if len(await client.keys("rt:cache:*:u:*")) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"L2 never held {count} URLs")
    finally:
        await client.aclose()


async def ready(gw: InProcessGateway, proxy: HoldingProxy, server: RedisServer) -> None:
    """The gateway with its L2 generation known, its pipe connected and the scripts loaded
    (a first request, stored)."""
    assert gw.process.services is not None
    svc = gw.process.services.cache
    assert svc is not None and svc.l2 is not None
    l2 = svc.l2
    for _ in range(100):
        if l2.gen is not None:
            break
        await asyncio.sleep(0.05)
    status, _, _ = await get(f"{gw.url}/market/warm", Host=HOST, **USER)
    assert status == 200
    await stored(server, 1)


@pytest.fixture
async def gw(gateway_factory: Callable[..., Any], upstream: Upstream, proxy: HoldingProxy,
             redis_server: RedisServer) -> InProcessGateway:
    """A gateway whose one route has 3 rate-limit rules and the L2 cache, through `proxy`."""
    upstream.on("/market/*", counting(Cache_Control="max-age=60"))
    started: InProcessGateway = await gateway_factory(limited_cached_config(upstream,
                                                                            proxy.url))
    await ready(started, proxy, redis_server)
    return started


async def test_an_l2_hit_costs_one_write_and_one_round_trip(
        gw: InProcessGateway, upstream: Upstream, proxy: HoldingProxy,
        redis_server: RedisServer) -> None:
    assert gw.process.services is not None and gw.process.services.cache is not None
    svc = gw.process.services.cache
    await get(f"{gw.url}/market/shared", Host=HOST, **USER)  # stored in L1 and L2
    await stored(redis_server, 2)
    svc.memory.clear()  # a cold L1: the next request must read L2
    before, others = len(proxy.chunks), len(proxy.others)
    proxy.hold()
    answer = asyncio.create_task(get(f"{gw.url}/market/shared", Host=HOST, **USER))
    await proxy.until(lambda: len(proxy.chunks) > before)
    # Both reached Redis while no reply could come back, in one write: the decision and
    # the L2 lookup are one round trip.
    assert sorted(proxy.chunks[before]) == ["EVALSHA ratelimit", "HGETALL"]
    proxy.release()
    status, headers, _ = await answer
    assert status == 200 and headers["X-Cache"] == "HIT"
    assert len(proxy.chunks) == before + 1  # nothing else was sent for it
    assert not {"HGETALL", "EVALSHA ratelimit"} & set(proxy.others[others:])
    assert upstream.count("/market/shared") == 1


async def test_a_miss_waits_for_one_round_trip_and_stores_in_the_background(
        gw: InProcessGateway, proxy: HoldingProxy) -> None:
    before, replies = len(proxy.chunks), proxy.replies
    proxy.hold()
    answer = asyncio.create_task(get(f"{gw.url}/market/new", Host=HOST, **USER))
    await proxy.until(lambda: len(proxy.chunks) > before)
    assert sorted(proxy.chunks[before]) == ["EVALSHA ratelimit", "HGETALL"]
    await proxy.until(lambda: proxy.replies >= replies + 2)
    proxy.release()
    proxy.hold()  # the store's reply will stay held: the client must get its answer anyway
    status, headers, _ = await answer
    assert status == 200 and headers["X-Cache"] == "MISS"
    await proxy.until(lambda: len(proxy.chunks) > before + 1)
    assert proxy.chunks[before + 1:] == [["EVALSHA cache_store_variant"]]
    proxy.release()


async def test_concurrent_requests_share_round_trips(gw: InProcessGateway,
                                                     proxy: HoldingProxy) -> None:
    """20 requests arriving together: their 40 commands leave in far fewer writes."""
    before = len(proxy.chunks)
    proxy.hold()
    answers = asyncio.gather(*(get(f"{gw.url}/market/c{i}", Host=HOST, **USER)
                               for i in range(20)))
    await proxy.until(lambda: len(proxy.commands()) - sum(map(len, proxy.chunks[:before]))
                      >= 40)
    writes = len(proxy.chunks) - before
    proxy.release()
    assert all(status == 200 for status, _, _ in await answers)
    assert writes < 20  # fewer writes than requests: round trips per request fall below 1


@pytest.mark.parametrize("disrupt", ["kill", "pause"])
async def test_redis_dead_or_hung_fails_open_and_the_cache_passes_through(
        gw: InProcessGateway, upstream: Upstream, redis_server: RedisServer,
        disrupt: str) -> None:
    """Decision and lookup share the pipe, and so its trouble: the limiter fails open
    (the route's failure_mode), the cache answers from upstream, and both come back."""
    getattr(redis_server, disrupt)()
    try:
        results = await asyncio.gather(*(get(f"{gw.url}/market/down{i}", Host=HOST, **USER)
                                         for i in range(6)))
    finally:
        (redis_server.resume if disrupt == "pause" else redis_server.start)()
    assert [(status, headers["X-Cache"]) for status, headers, _ in results] == \
        [(200, "MISS")] * 6
    assert gw.process.services is not None and gw.process.services.cache is not None
    svc = gw.process.services.cache
    answers = []
    for _ in range(100):  # the breaker's cool-down and the resubscription, then L2 serves
        await asyncio.sleep(0.1)
        svc.memory.clear()
        status, headers, _ = await get(f"{gw.url}/market/back", Host=HOST, **USER)
        answers.append((status, headers["X-Cache"]))
        if answers[-1] == (200, "HIT"):  # stored in L2 by an earlier round, read from it
            break
    assert answers[-1] == (200, "HIT") and {s for s, _ in answers} == {200}
