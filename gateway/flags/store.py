"""Runtime flag changes: kept per process, and with Redis shared by every worker and gateway.

With Redis, a change is written to one hash (`{key_prefix}flags:overrides`, field = flag key,
value = JSON definition) and published on `{key_prefix}flags:changes` in the same Lua call, so
the stored state and the announcements are in one order. Every process subscribes on a
connection of its own (a subscribed connection can do nothing else, and it must block far
longer than `redis.timeout`), applies each announcement, and after every (re)connection reads
the whole hash again: a change made while it was cut off, or before it started, is never
lost. A gateway started later thus serves the stored changes, which win over the file until
deleted.

Without Redis, changes live in this process only (the supervisor sends a change to every
worker, so a whole gateway applies it; they are lost on restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from gateway.redisconn import RedisLink, Subscription

log = logging.getLogger("gateway.flags")

Definition = dict[str, Any]

# HSET or HDEL, then PUBLISH: one atomic step, so no subscriber can read a stale hash
# after seeing the announcement.
_WRITE = """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

class FlagOverrides:
    """Definitions that replace (or add to) the config file's flags at run time."""

    def __init__(self, redis: RedisLink | None = None) -> None:
        self.redis = redis
        self.definitions: dict[str, Definition] = {}
        self.version = 0  # bumped on every change; engines rebuild when it moves
        self.lock = asyncio.Lock()  # one admin change at a time: validate, then write
        self.synced = asyncio.Event()
        self._subscription: Subscription | None = None
        if redis is not None:
            prefix = redis.prefix
            self.hash_key = f"{prefix}flags:overrides"
            self.channel = f"{prefix}flags:changes"
            self._script = redis.client.register_script(_WRITE)

    # ------------------------------------------------------------------ local state
    def apply(self, key: str, definition: Definition | None) -> None:
        if definition is None:
            if self.definitions.pop(key, None) is None:
                return
        elif self.definitions.get(key) == definition:
            return
        else:
            self.definitions[key] = definition
        self.version += 1

    def _replace_all(self, definitions: dict[str, Definition]) -> None:
        if definitions != self.definitions:
            self.definitions = definitions
            self.version += 1

    # ------------------------------------------------------------------ changes
    async def put(self, key: str, definition: Definition | None) -> None:
        """Store (or with None, delete) a definition everywhere.

        With Redis the write happens there first and only then here: when Redis is
        unreachable this raises `RedisUnavailable` and nothing has changed anywhere.
        """
        if self.redis is not None:
            payload = orjson.dumps(definition).decode() if definition is not None else ""
            message = orjson.dumps({"key": key, "definition": definition}).decode()
            await self.redis.call(lambda: self._script(
                keys=[self.hash_key], args=[key, payload, self.channel, message]))
        self.apply(key, definition)

    # ------------------------------------------------------------------ subscriber
    async def start(self, wait: float = 1.0) -> None:
        """Start following Redis; wait up to `wait` seconds for the stored changes."""
        if self.redis is None:
            self.synced.set()
            return
        self._subscription = Subscription(self.redis, self.channel, self._on_message,
                                          self._resync, name="flag overrides")
        self._subscription.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.synced.wait(), wait)
        if not self.synced.is_set():
            log.warning("flag overrides: Redis did not answer at start; serving the file's "
                        "flags and retrying in the background")

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def _resync(self, client: Any) -> None:
        """After every (re)subscription: the whole stored state, then announcements."""
        stored = await client.hgetall(self.hash_key)
        definitions: dict[str, Definition] = {}
        for field, raw in stored.items():
            key = field.decode() if isinstance(field, bytes) else str(field)
            try:
                definition = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.error("flag overrides: stored definition of %r is not JSON; ignored", key)
                continue
            if isinstance(definition, dict):
                definitions[key] = definition
        self._replace_all(definitions)
        self.synced.set()

    def _on_message(self, data: object) -> None:
        try:
            change = orjson.loads(data) if isinstance(data, (bytes, str)) else None
        except orjson.JSONDecodeError:
            change = None
        if not isinstance(change, dict) or not isinstance(change.get("key"), str):
            log.error("flag overrides: ignoring a malformed announcement %r", data)
            return
        definition = change.get("definition")
        self.apply(change["key"], definition if isinstance(definition, dict) else None)
