"""The Redis store: one EVALSHA of `lua/ratelimit.lua` per decision, batched.

Decisions of requests that arrive together are written together (one round trip, many
EVALSHAs): the first submission of a loop iteration schedules a flush with `call_soon`, so
an idle gateway adds no wait and a busy one sends everything that arrived during the
iteration at once. Each request still gets its own script call, so Redis `INFO
commandstats` shows one evalsha per decided request and each decision stays atomic.
The commands go over the link's pipelined connection (gateway/redispipe.py: deadline,
breaker and NOSCRIPT reload there), which the cache's L2 shares, so a request's decision
and its L2 lookup leave in one write; a cluster client, which has no single pool, batches
through redis-py's pipeline instead. The gateway itself decides on a cluster with
`ClusterStore` (one pipe per master, rules grouped by slot).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from gateway.luascripts import LuaScript, load_script
from gateway.ratelimit.decision import Decision
from gateway.ratelimit.plan import Prepared
from gateway.ratelimit.rules import Check
from gateway.redisconn import RedisLink, RedisUnavailable
from gateway.redispipe import Command, bulk, load_command

Call = tuple[tuple[str, ...], tuple[bytes, ...]]


def script_call(checks: Sequence[Check], now_us: int | None, commit: bool) -> Call:
    keys = tuple(key for check in checks for key in check.keys)
    rules = b"".join([check.script_args() for check in checks])
    return keys, (b"" if now_us is None else str(now_us).encode(), b"1" if commit else b"0",
                  rules)


class RedisStore:
    def __init__(self, link: RedisLink, batched: bool = True,
                 script: LuaScript | None = None) -> None:
        self.link = link
        self.batched = batched
        self.script = script or load_script("ratelimit")
        self._sha = self.script.sha.encode()
        self._reload = load_command(self.script.source)
        # A cluster client has no single pool: it batches through redis-py's pipeline.
        self._pipe = link.pipe if batched else None
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def decide(self, checks: Sequence[Check], now_us: int | None = None,
                     commit: bool = True) -> Decision:
        call = script_call(checks, now_us, commit)
        if self._pipe is not None:
            return Decision.from_flat(await self._pipe.submit(self._command(call)))
        if not self.batched:
            return Decision.from_flat(await self.link.call(lambda: self._one(call)))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((call, future))
        return Decision.from_flat(await future)

    async def decide_prepared(self, prepared: Prepared) -> Decision:
        if self._pipe is None:
            return await self.decide(prepared.checks)
        command = prepared.wire
        if command is None:  # first request of this combination: encode it once
            command = prepared.wire = self._command(script_call(prepared.checks, None, True))
        return Decision.from_flat(await self._pipe.submit(command))

    async def reset(self, keys: Sequence[str]) -> None:
        await self.link.call(lambda: self.link.client.delete(*keys))

    async def close(self) -> None:
        """Nothing of its own to close: the pipe is the link's."""

    def _command(self, call: Call) -> Command:
        keys = call[0]
        return Command(pack_evalsha(self._sha, *call), keys[0] if keys else "", self._reload)

    # ------------------------------------------------------------------ wire
    async def _one(self, call: Call) -> Any:
        keys, args = call
        try:
            return await self.link.client.evalsha(self.script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.link.client.script_load(self.script.source)
            return await self.link.client.evalsha(self.script.sha, len(keys), *keys, *args)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._flushing.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._flushing.discard)

    async def _send(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self.link.call(lambda: self._pipeline([c for c, _ in batch]))
        except RedisUnavailable as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(RedisUnavailable(str(exc)))
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the client went away meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(RedisUnavailable(f"script error: {reply}"))
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        replies = await self._run(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self.link.client.script_load(self.script.source)
            again = await self._run([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _run(self, calls: list[Call]) -> list[Any]:
        pipe = self.link.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


@functools.lru_cache(maxsize=4096)
def _bulk_args(args: tuple[bytes, ...]) -> bytes:
    return b"".join(bulk(a) for a in args)


def pack_evalsha(sha: bytes, keys: tuple[str, ...], args: tuple[bytes, ...]) -> bytes:
    """One EVALSHA in RESP (the rules' part of ARGV comes pre-encoded)."""
    head = b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (3 + len(keys) + len(args), bulk(sha),
                                                bulk(b"%d" % len(keys)))
    return b"".join((head, *(bulk(k.encode("utf-8", "surrogateescape")) for k in keys),
                     _bulk_args(args[:2]), *(bulk(a) for a in args[2:])))

