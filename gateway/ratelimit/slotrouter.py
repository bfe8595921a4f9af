"""Commands to a Redis Cluster through one pipelined connection per master, routed by slot.

Each master gets a `Pipe` (gateway/redispipe.py: one batched write per loop iteration,
hiredis, `redis.timeout` and the NOSCRIPT reload per command) over a pool of its own bounded
by `redis.max_connections_per_node`, and a circuit breaker of its own, so a dead master
fails the requests of its slots only. The slot map comes from `CLUSTER SLOTS`, asked of any node
that answers (the configured one first).

Redirections are followed within one call, at most `MAX_HOPS` times:
* MOVED: the slot has a new owner for good. The command goes there at once, and the map is
  read again in the background (one slot moving usually means a reshard or a failover).
* ASK: the slot is being migrated; this one command goes to the target preceded by ASKING,
  written together on the same connection so nothing can come between them.
* TRYAGAIN: a multi-key command met a slot whose keys are half migrated; sent again after
  `TRYAGAIN_PAUSE` (migrating a slot's keys takes milliseconds).
Any other trouble (refused, no reply within `redis.timeout`, breaker open) fails the call
with RedisUnavailable, so the stage answers per failure_mode within `redis.timeout`, and
the map is read again (at most every `REFRESH_EVERY` seconds) so that once a replica has
taken over, requests go to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gateway.redisconn import CircuitBreaker, RedisLink, RedisUnavailable, with_node
from gateway.redispipe import Command, ErrorReply, Pipe
from gateway.redisslots import Address, Redirect, SlotMap, parse_cluster_slots, redirect_of

log = logging.getLogger("gateway.redis")

MAX_HOPS = 8
TRYAGAIN_PAUSE = 0.005
REFRESH_EVERY = 0.1
ASKING = Command(b"*1\r\n$6\r\nASKING\r\n")
CLUSTER_SLOTS = Command(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n")


class SlotRouter:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        settings = link.settings
        first = urlsplit(settings.url)
        self.seed: Address = (first.hostname or "127.0.0.1", first.port or 6379)
        self.map: SlotMap | None = None
        self.pipes: dict[Address, Pipe] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._first: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    # ------------------------------------------------------------------ calls
    async def call(self, slot: int, command: Command) -> Any:
        """The reply of `command`, all of whose keys are in `slot`."""
        if self.map is None:
            await self.first_map()
        return await self.settle(slot, command, self.send(slot, command))

    async def first_map(self) -> None:
        """Read the slot map before the first command: one `CLUSTER SLOTS` however many
        requests arrive meanwhile (each fails with it if no node answers)."""
        if self._first is None or self._first.done():
            self._first = asyncio.get_running_loop().create_task(self.refresh())
        await asyncio.shield(self._first)

    def send(self, slot: int, command: Command) -> asyncio.Future[Any]:
        """Write `command` to the master of `slot` (as the map says; it must be read)
        without waiting: a caller sending to several slots awaits their replies together,
        with no task per call. `settle` then follows what the reply asks for."""
        assert self.map is not None
        target = self.map.owner(slot)
        if target is None:
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(RedisUnavailable(f"no master serves slot {slot}"))
            return failed
        return self.pipe(target).submit(command)

    async def settle(self, slot: int, command: Command, sent: asyncio.Future[Any]) -> Any:
        """The reply to `command` sent as `sent`, following redirections."""
        try:
            return await sent
        except ErrorReply as exc:
            redirect = redirect_of(exc.error)
            if redirect is None:
                raise
            return await self._follow(slot, command, redirect)
        except RedisUnavailable:
            self.refresh_soon()
            raise

    async def _follow(self, slot: int, command: Command, redirect: Redirect) -> Any:
        assert self.map is not None
        for _ in range(MAX_HOPS):
            target, asking = redirect.target, redirect.kind == "ASK"
            if redirect.kind == "TRYAGAIN":
                await asyncio.sleep(TRYAGAIN_PAUSE)
                target = self.map.owner(slot)
            elif redirect.kind == "MOVED":
                self.refresh_soon()
            if target is None:
                self.refresh_soon()
                raise RedisUnavailable(f"no master serves slot {slot}")
            pipe = self.pipe(target)
            if asking:
                pipe.submit(ASKING).add_done_callback(_consume)
            try:
                return await pipe.submit(command)
            except ErrorReply as exc:
                again = redirect_of(exc.error)
                if again is None:
                    raise
                redirect = again
            except RedisUnavailable:
                self.refresh_soon()
                raise
        raise RedisUnavailable(f"slot {slot}: more than {MAX_HOPS} redirections")

    def pipe(self, address: Address) -> Pipe:
        pipe = self.pipes.get(address)
        if pipe is None:
            settings = self.link.settings
            pool = aioredis.BlockingConnectionPool.from_url(
                with_node(settings.url, *address),
                max_connections=settings.max_connections_per_node, timeout=settings.timeout,
                socket_timeout=settings.timeout, socket_connect_timeout=settings.timeout)
            pipe = self.pipes[address] = Pipe(self.link, pool, CircuitBreaker())
        return pipe

    # ------------------------------------------------------------------ the slot map
    def refresh_soon(self) -> None:
        """Read the slot map again in the background, unless that is under way or was done
        within REFRESH_EVERY seconds."""
        if self._refreshing is not None or time.monotonic() - self._refreshed_at < REFRESH_EVERY:
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except RedisUnavailable as exc:
            log.warning("could not read the Redis Cluster slot map: %s", exc)
        finally:
            self._refreshing = None

    async def refresh(self) -> None:
        """Ask the known masters, then the configured node, then the other known nodes,
        for `CLUSTER SLOTS`; the first answer wins."""
        self._refreshed_at = time.monotonic()
        known = list(self.map.masters) if self.map is not None else []
        candidates = list(dict.fromkeys([*known, self.seed, *self.pipes]))
        why = "no node to ask"
        for address in candidates:
            try:
                reply = await self.pipe(address).submit(CLUSTER_SLOTS)
            except RedisUnavailable as exc:
                why = f"{address[0]}:{address[1]}: {exc}"
                continue
            fresh = parse_cluster_slots(reply, address)
            if fresh.owners:
                self.map = fresh
                return
            why = f"{address[0]}:{address[1]} serves no slots"
        raise RedisUnavailable(f"no Redis Cluster node gave its slot map ({why})")

    async def close(self) -> None:
        for task in (self._refreshing, self._first):
            if task is not None:
                task.cancel()
        for pipe in self.pipes.values():
            await pipe.close()
            await pipe.pool.disconnect()


def _consume(future: asyncio.Future[Any]) -> None:
    """ASKING's own reply matters to nobody: its failure shows in the command's."""
    if not future.cancelled():
        future.exception()
