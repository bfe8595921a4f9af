"""The long-lived cache: L1, L2, in-flight fetches and purges. Survives config reloads.

Purges are plain async functions (`purge_url`, `purge_tag`, `purge_all`) for the admin API.
With Redis they reach every worker and instance through pub/sub; without Redis they reach
this process only (the caller forwards them to each worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from gateway.cache.entry import Entry, decode
from gateway.cache.key import url_key, vary_values
from gateway.cache.memory import MemoryStore
from gateway.cache.redisstore import RedisStore
from gateway.config.model import CacheSettings
from gateway.redisconn import RedisLink, RedisUnavailable

# The request's header section as the upstream would get it, built only if asked for.
HeaderSource = Callable[[], Mapping[str, str]]

log = logging.getLogger("gateway.cache")

HIT_FOR_MISS = 30.0  # seconds a key that gave an unstorable response skips collapsing


class Flight:
    """One upstream fetch that concurrent misses for the same key wait for.

    Most misses have nobody waiting on them (every URL new, or requests spread out), so the
    Event exists only once someone waits: the fetch itself pays for neither it nor its set."""

    __slots__ = ("_done", "finished", "stored")

    def __init__(self) -> None:
        self._done: asyncio.Event | None = None
        self.finished = False
        self.stored = False

    async def wait(self) -> None:
        if self.finished:
            return
        if self._done is None:
            self._done = asyncio.Event()
        await self._done.wait()

    def finish(self, stored: bool) -> None:
        if not self.finished:
            self.finished = True
            self.stored = stored
            if self._done is not None:
                self._done.set()


class CacheService:
    def __init__(self, settings: CacheSettings, redis: RedisLink | None) -> None:
        self.settings = settings
        self.memory = MemoryStore(settings.memory_max)
        self.l2 = RedisStore(redis) if settings.redis and redis is not None else None
        self.flights: dict[str, Flight] = {}
        self.refreshing: set[str] = set()
        self._hit_for_miss: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # The ignore_query set of each cached route, for purge-by-URL (see keys_of).
        self.ignore_sets: frozenset[frozenset[str]] = frozenset()

    def configure(self, settings: CacheSettings, ignore_sets: frozenset[frozenset[str]]) -> None:
        """A reload: new limits apply to what is stored from now on."""
        self.settings = settings
        self.memory.max_bytes = settings.memory_max
        self.ignore_sets = ignore_sets

    async def start(self) -> None:
        if self.l2 is not None:
            await self.l2.start(self._apply, self.memory.clear)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.l2 is not None:
            await self.l2.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ lookups
    async def lookup(self, url: str, request_headers: HeaderSource, now: float
                     ) -> Entry | None:
        """The stored variant matching this request: L1 first, then L2 (which fills L1).
        A hit-for-miss key skips L2: it just proved uncacheable, a round trip would be waste."""
        entry = self.lookup_memory(url, request_headers, now)
        if entry is not None:
            return entry
        return await self.lookup_shared(url, request_headers, now)

    def lookup_memory(self, url: str, request_headers: HeaderSource, now: float
                      ) -> Entry | None:
        """`lookup` in L1 alone, without a coroutine: the whole of an L1 hit."""
        found = self.memory.by_url.get(url)
        if not found:
            return None
        entry = _match(found.values(), request_headers, now)
        if entry is not None:
            self.memory.touch(entry)
        return entry

    def read_ahead(self, url: str) -> asyncio.Future[Any] | None:
        """Start the L2 read `lookup_shared` will need, if it will: L1 holds nothing for
        the URL (a URL with variants in L1 is most likely answered from there) and it is
        not hit-for-miss. See RedisStore.read_ahead."""
        if self.l2 is None or self.memory.variants_of(url) or self.is_hit_for_miss(url):
            return None
        return self.l2.read_ahead(url)

    async def lookup_shared(self, url: str, request_headers: HeaderSource, now: float,
                            ahead: asyncio.Future[Any] | None = None) -> Entry | None:
        """The L2 half of `lookup` (after an L1 miss); `ahead`: its read, already asked for."""
        if self.l2 is None or (ahead is None and self.is_hit_for_miss(url)):
            return None
        candidates = [e for e in map(decode, await self.l2.variants(url, ahead))
                      if e is not None]
        entry = _match(candidates, request_headers, now)
        if entry is not None:
            self.memory.put(entry)
        return entry

    def store(self, entry: Entry) -> None:
        self.memory.put(entry)
        if self.l2 is not None:
            self.l2.put(entry)

    def add_encoding(self, entry: Entry, coding: str, body: bytes) -> None:
        """Keep `body`, the entry's body in `coding`, with it: counted in memory_max, and
        written to L2 so the other instances serve it without coding it again. L2 writes
        go out in the order they are made (one pipelined connection), so this one, with
        more variants, lands after the store it follows."""
        if coding in entry.encoded:
            return
        before = entry.size
        entry.encoded[coding] = body
        self.memory.grew(entry, entry.size - before)
        if self.l2 is not None:
            self.l2.put(entry)

    def forget(self, entry: Entry) -> None:
        self.memory.remove(entry.url, entry.variant)

    # ------------------------------------------------------------ hit-for-miss
    def is_hit_for_miss(self, key: str) -> bool:
        until = self._hit_for_miss.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            del self._hit_for_miss[key]
            return False
        return True

    def mark_hit_for_miss(self, key: str) -> None:
        if len(self._hit_for_miss) > 100_000:  # bound it: drop what has lapsed
            now = time.monotonic()
            self._hit_for_miss = {k: t for k, t in self._hit_for_miss.items() if t > now}
        self._hit_for_miss[key] = time.monotonic() + HIT_FOR_MISS

    def clear_hit_for_miss(self, key: str) -> None:
        self._hit_for_miss.pop(key, None)

    # ------------------------------------------------------------ purges
    def keys_of(self, url: str) -> list[str]:
        """Every key the URL may be stored under: as each cached route keys it (each leaves
        out its own ignore_query parameters) and exactly as given. The service cannot know
        which route a bare URL belongs to, so it forgets all of them."""
        keys = [url_key(url, ignored) for ignored in self.ignore_sets]
        return list(dict.fromkeys([*keys, url_key(url)]))

    # With strict=True (an operator's purge) a purge that could not reach Redis raises
    # RedisUnavailable after this process forgot its copies, so the caller can say that
    # other instances were not told; unsafe-method invalidation passes strict=False.
    async def purge_url(self, url: str, strict: bool = False) -> int:
        """Forget every variant stored for `url` everywhere; returns how many this process had."""
        return await self.invalidate(self.keys_of(url), strict)

    async def invalidate(self, keys: list[str], strict: bool = False) -> int:
        count = sum(self.memory.drop_url(key) for key in keys)
        for key in keys:
            await self._everywhere(self.l2.purge_url(key) if self.l2 else None, strict)
        return count

    async def purge_tag(self, tag: str, strict: bool = False) -> int:
        count = self.memory.drop_tag(tag)
        await self._everywhere(self.l2.purge_tag(tag) if self.l2 else None, strict)
        return count

    async def purge_all(self, strict: bool = False) -> int:
        count = self.memory.clear()
        await self._everywhere(self.l2.purge_all() if self.l2 else None, strict)
        return count

    async def _everywhere(self, call: Coroutine[Any, Any, None] | None, strict: bool) -> None:
        if call is None:
            return
        try:
            await call
        except RedisUnavailable as exc:
            if strict:
                raise
            # Not fatal for this process (L1 is already clean); other instances keep theirs
            # until it expires. Logged loudly: an operator asked for it.
            log.warning("cache purge did not reach Redis: %s", exc)

    def _apply(self, message: dict[str, Any]) -> None:
        """A purge published by any process (ourselves included: purges are idempotent)."""
        if message.get("all"):
            self.memory.clear()
        url, tag = message.get("url"), message.get("tag")
        if isinstance(url, str):
            self.memory.drop_url(url)
        if isinstance(tag, str):
            self.memory.drop_tag(tag)


def _match(entries: Iterable[Entry], request_headers: HeaderSource, now: float
           ) -> Entry | None:
    """The newest variant whose Vary values equal the request's (RFC 9111 §4.1).

    The request's headers are what the upstream would get (flag headers included), asked
    for only when a stored variant has a Vary to compare."""
    best: Entry | None = None
    for entry in entries:
        if entry.age(now) >= entry.fresh.keep_for and not _has_validator(entry):
            continue  # of no use any more
        # No Vary: nothing of the request to compare (vary_values would give () for ()).
        if (vary_values(entry.vary, request_headers()) if entry.vary else ()
                ) != entry.vary_values:
            continue
        if best is None or entry.response_time > best.response_time:
            best = entry
    return best


def _has_validator(entry: Entry) -> bool:
    return "ETag" in entry.headers or "Last-Modified" in entry.headers
