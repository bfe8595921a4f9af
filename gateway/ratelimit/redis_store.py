"""The Redis store: one EVALSHA of `lua/ratelimit.lua` per decision, batched.

Decisions of requests that arrive together are written in one pipeline (one round trip,
many EVALSHAs): the first submission of a loop iteration schedules a flush with
`call_soon`, so an idle gateway adds no wait and a busy one sends everything that arrived
during the iteration at once. Each request still gets its own script call, so Redis
`INFO commandstats` shows one evalsha per decided request and each decision stays atomic.
A NOSCRIPT reply (Redis restarted, SCRIPT FLUSH) loads the script and repeats those calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from gateway.ratelimit.decision import Decision
from gateway.ratelimit.rules import Check
from gateway.ratelimit.scripts import LuaScript, load_script
from gateway.redisconn import RedisLink, RedisUnavailable

Call = tuple[tuple[str, ...], tuple[Any, ...]]


def script_call(checks: Sequence[Check], now_us: int | None, commit: bool) -> Call:
    keys = tuple(key for check in checks for key in check.keys)
    args: list[Any] = ["" if now_us is None else str(now_us), "1" if commit else "0"]
    for check in checks:
        args.extend(check.script_args())
    return keys, tuple(args)


class RedisStore:
    def __init__(self, link: RedisLink, batched: bool = True,
                 script: LuaScript | None = None) -> None:
        self.link = link
        self.batched = batched
        self.script = script or load_script("ratelimit")
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def decide(self, checks: Sequence[Check], now_us: int | None = None,
                     commit: bool = True) -> Decision:
        call = script_call(checks, now_us, commit)
        if not self.batched:
            return Decision.from_flat(await self.link.call(lambda: self._one(call)))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((call, future))
        return Decision.from_flat(await future)

    async def reset(self, keys: Sequence[str]) -> None:
        await self.link.call(lambda: self.link.client.delete(*keys))

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
        for (_, future), reply in zip(batch, replies):
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
            for i, reply in zip(missing, again):
                replies[i] = reply
        return replies

    async def _run(self, calls: list[Call]) -> list[Any]:
        pipe = self.link.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

