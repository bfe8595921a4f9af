"""The shared pipe (gateway/redispipe.py) with several scripts and plain commands in one
batch, against a real redis-server: what the limiter and the L2 cache send together."""

from __future__ import annotations

import asyncio
import gc
import hashlib

import pytest
import redis

from gateway.config.model import RedisSettings
from gateway.redisconn import RedisLink, RedisUnavailable
from gateway.redispipe import Command, load_command, pack_command, script_command
from tests.harness import RedisServer

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
APPEND = "return redis.call('APPEND', KEYS[1], ARGV[1])"


def sha1(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def calls(server: RedisServer, command: str) -> int:
    client = redis.Redis(port=server.port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    entry = stats.get(f"cmdstat_{command}") or stats.get(f"cmdstat_{command.split('|')[0]}")
    return int((entry or {}).get("calls", 0))


async def test_after_a_script_flush_each_script_reloads_once_and_all_are_answered(
        redis_server: RedisServer) -> None:
    """Two scripts and a plain command, interleaved in one write after SCRIPT FLUSH: each
    script is loaded again once (its own SCRIPT LOAD) and every command is answered. A
    resent script runs after the commands written behind it: each command is atomic on its
    own, and nothing the gateway batches depends on the order between requests."""
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=2.0))
    pipe = link.pipe
    assert pipe is not None
    incr = script_command(sha1(INCR), ("n",), (b"2",), load_command(INCR))
    append = script_command(sha1(APPEND), ("s",), (b"x",), load_command(APPEND))
    get = Command(pack_command(b"GET", b"n"), "n")
    try:
        redis_server.cli("CONFIG", "RESETSTAT")
        replies = await asyncio.gather(*(pipe.submit(c) for c in (incr, append, get) * 5))
        assert replies[0::3] == [2, 4, 6, 8, 10] and replies[1::3] == [1, 2, 3, 4, 5]
        assert replies[2::3] == [None] * 5  # read before the resent scripts ran
        assert await pipe.submit(get) == b"10"
        assert calls(redis_server, "script|load") == 2
        assert calls(redis_server, "evalsha") == 20  # each refused once, then run once
    finally:
        await link.close()


async def test_an_error_reply_fails_its_command_alone(redis_server: RedisServer) -> None:
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=2.0))
    pipe = link.pipe
    assert pipe is not None
    try:
        redis_server.cli("SET", "text", "abc")
        wrong = pipe.submit(Command(pack_command(b"HGETALL", b"text"), "text"))  # WRONGTYPE
        fine = pipe.submit(Command(pack_command(b"GET", b"text"), "text"))
        with pytest.raises(RedisUnavailable, match="WRONGTYPE"):
            await wrong
        assert await fine == b"abc"
        assert not link.breaker.is_open and link.breaker.failures == 0
    finally:
        await link.close()


async def test_a_failed_command_nobody_awaits_is_not_reported_and_one_awaited_still_fails(
        redis_server: RedisServer) -> None:
    """A read asked ahead whose request was refused meanwhile is never awaited: neither an
    error reply nor a lost connection may leave asyncio's "exception was never retrieved"
    behind, while a caller that does await still gets the failure."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=0.5))
    pipe = link.pipe
    assert pipe is not None
    try:
        redis_server.cli("SET", "text", "abc")
        pipe.submit(Command(pack_command(b"HGETALL", b"text"), "text"))  # WRONGTYPE, dropped
        assert await pipe.submit(Command(pack_command(b"GET", b"text"), "text")) == b"abc"
        redis_server.pause()  # no reply: the pipe's deadline breaks the connection
        try:
            pipe.submit(Command(pack_command(b"GET", b"text"), "text"))  # dropped
            awaited = pipe.submit(Command(pack_command(b"GET", b"text"), "text"))
            with pytest.raises(RedisUnavailable):
                await awaited
        finally:
            redis_server.resume()
        gc.collect()  # a dropped future reports an unretrieved exception when collected
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)
        await link.close()
