"""L2: stored responses in Redis, shared by every worker and instance, and purge messages.

Key layout (prefix = `redis.key_prefix`), chosen to work unchanged in Redis Cluster:

    {P}cache:gen                      generation number; purge-all INCRs it
    {P}cache:<gen>:u:{<urlhash>}      HASH variant-id -> encoded entry (one key per URL)
    {P}cache:<gen>:t:{<tag>}          SET of the URL hash keys carrying that purge tag
    {P}cache:purge                    pub/sub channel of purge messages

A key's hash tag is its URL hash (or its tag), so on a cluster its slot depends on the URL
alone: different URLs spread over the masters (1,000 URLs over 3 masters: 33/34/33%,
tests/integration/test_cluster_stores.py), a URL keeps its master from one generation to the
next, and a script may add keys of the same URL without crossing slots. Every command and
script touches one key, so no two keys ever need to share a slot: a URL's variants live in
one hash (lookup = one HGETALL, purge-by-URL = one DEL), the tag script gets the URL key's
name as an argument, not a key, and purge-by-tag reads the tag's set and deletes its URL keys
one by one (per-key DELs in a non-transactional pipeline, which redis-py routes per slot in
Cluster). Purge-all bumps the generation instead of scanning: old keys become unreachable at
once, on every master, and expire on their own TTLs. A tag purges every variant of the URLs
it names (conservative: a variant is never kept by mistake).

Request-path reads and writes go over the link's pipelined connection (gateway/redispipe.py),
which the rate limiter's decisions share: commands of one event-loop iteration leave in one
write, so a request's decision and its L2 lookup cost one round trip, and the stores of a
busy gateway ride along with other requests' commands. Redis's deadline and breaker govern
them as they do every call; any failure is a miss or a skipped store, never an error for
the client. (A cluster client, which has no single connection, calls through redis-py.)
Purges and the generation are admin-path calls through redis-py (RedisLink.call).

The generation is read when the subscriber connects; until then (Redis down at start) L2 is
not used at all, so a purge-all that happened meanwhile can never be undone by reading an
old generation.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from gateway.cache.entry import Entry, decode, encode
from gateway.cache.key import url_hash
from gateway.luascripts import load_script
from gateway.redisconn import RedisLink, RedisUnavailable, Subscription
from gateway.redispipe import Command, bulk, load_command, pack_command, script_command

log = logging.getLogger("gateway.cache")

# URLs whose HGETALL is kept ready (its key hashed and the command packed: ~1.4 us a
# lookup otherwise); a few thousand hot URLs cover most hits, and past the bound the memo
# starts over rather than tracking recency.
READS_KEPT = 4096
MAX_VARIANTS = 32  # per URL: a Vary on something like User-Agent must not grow a hash forever
KEEP_MARGIN = 60  # seconds past an entry's last useful moment, to absorb clock skew


PurgeHandler = Callable[[dict[str, Any]], None]


class RedisStore:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.prefix = f"{link.prefix}cache:"
        self.channel = f"{self.prefix}purge"
        self.gen: int | None = None
        self.origin = os.urandom(8).hex()
        store_variant, tag_url = load_script("cache_store_variant"), load_script("cache_tag_url")
        self._store_variant = link.client.register_script(store_variant.source)
        self._tag_url = link.client.register_script(tag_url.source)
        # (sha, SCRIPT LOAD) of each script, for the pipe's EVALSHAs
        self._scripts = {script.name: (script.sha, load_command(script.source))
                         for script in (store_variant, tag_url)}
        self._pipe = link.pipe
        sha, self._store_reload = self._scripts["cache_store_variant"]
        self._store_head = store_head(sha)
        self._subscription: Subscription | None = None
        self._reads: dict[str, tuple[int | None, Command]] = {}  # url -> (gen, its HGETALL)
        self._tasks: set[asyncio.Task[None]] = set()  # stores through redis-py (cluster)

    # ------------------------------------------------------------ keys
    def url_key(self, url: str) -> str:
        return f"{self.prefix}{self.gen}:u:{{{url_hash(url)}}}"

    def tag_key(self, tag: str) -> str:
        return f"{self.prefix}{self.gen}:t:{{{tag}}}"

    @property
    def usable(self) -> bool:
        return self.gen is not None and not self.link.breaker.refusing

    # ------------------------------------------------------------ request path
    def read_ahead(self, url: str) -> asyncio.Future[Any] | None:
        """Ask for `url`'s variants now, to be awaited by `variants` later: submitted in the
        same loop iteration as the request's rate-limit decision, both leave in one write.
        None when L2 is not in use or has no pipe. A reply nobody awaits (the request was
        refused meanwhile) is dropped quietly."""
        if self._pipe is None or not self.usable:
            return None
        known = self._reads.get(url)
        if known is None or known[0] != self.gen:  # a purge-all moves every key
            if len(self._reads) >= READS_KEPT:
                self._reads.clear()
            key = self.url_key(url)
            known = self._reads[url] = (self.gen, Command(pack_command(b"HGETALL",
                                                                       key.encode()), key))
        return self._pipe.submit(known[1])  # a failure nobody awaits stays quiet (Pipe)

    async def variants(self, url: str, ahead: asyncio.Future[Any] | None = None
                       ) -> list[bytes]:
        """The encoded variants stored for `url` (from `ahead`, when read ahead)."""
        if ahead is None:
            ahead = self.read_ahead(url)
            if ahead is None:
                return await self._variants_by_call(url) if self.usable else []
        try:
            found: list[bytes] | dict[bytes, bytes] = await ahead
        except RedisUnavailable as exc:
            log.debug("cache L2 lookup skipped: %s", exc)
            return []
        # A map in RESP3 (the protocol redis-py 8 speaks by default); field, value... in RESP2.
        return list(found.values()) if isinstance(found, dict) else found[1::2]

    async def _variants_by_call(self, url: str) -> list[bytes]:
        key = self.url_key(url)
        try:
            found: dict[bytes, bytes] = await self.link.call(lambda: self.link.client.hgetall(key))
        except RedisUnavailable as exc:
            log.debug("cache L2 lookup skipped: %s", exc)
            return []
        return list(found.values())

    def put(self, entry: Entry) -> None:
        """Store `entry` in the background: nobody waits for it, and a failure only means
        other processes miss it."""
        if not self.usable:
            return
        key = self.url_key(entry.url)
        keep = int(entry.fresh.keep_for) + KEEP_MARGIN
        data = encode(entry)
        if self._pipe is None:
            task = asyncio.get_running_loop().create_task(self._put_by_call(entry, key, keep,
                                                                            data))
            self._tasks.add(task)  # a reference, so the task is not collected mid-flight
            task.add_done_callback(self._tasks.discard)
            return
        submit = self._pipe.submit
        submit(store_command(self._store_head, key, entry.variant, data, keep,
                             self._store_reload)).add_done_callback(_skipped_store)
        if entry.tags:
            sha, reload = self._scripts["cache_tag_url"]
            for tag in entry.tags:
                submit(script_command(sha, (self.tag_key(tag),), (key.encode(), b"%d" % keep),
                                      reload)).add_done_callback(_skipped_store)

    async def _put_by_call(self, entry: Entry, key: str, keep: int, data: bytes) -> None:
        try:
            await self.link.call(lambda: self._store_variant(
                keys=[key], args=[entry.variant, data, keep, MAX_VARIANTS]))
            for tag in entry.tags:
                await self.link.call(partial(self._tag_url, keys=[self.tag_key(tag)],
                                             args=[key, keep]))
        except RedisUnavailable as exc:
            log.debug("cache L2 store skipped: %s", exc)

    # ------------------------------------------------------------ purges
    async def purge_url(self, url: str) -> None:
        if self.gen is not None:
            key = self.url_key(url)
            await self.link.call(lambda: self.link.client.delete(key))
        await self.publish({"url": url})

    async def purge_tag(self, tag: str) -> None:
        if self.gen is not None:
            tag_key = self.tag_key(tag)
            members: set[bytes] = await self.link.call(
                lambda: self.link.client.smembers(tag_key))

            async def delete_all() -> None:
                pipe = self.link.client.pipeline(transaction=False)
                for member in members:
                    pipe.delete(member)  # one key per command: fine across Cluster slots
                pipe.delete(tag_key)
                await pipe.execute()

            await self.link.call(delete_all)
        await self.publish({"tag": tag})

    async def purge_all(self) -> None:
        gen = int(await self.link.call(lambda: self.link.client.incr(f"{self.prefix}gen")))
        self.gen = gen
        await self.publish({"all": True, "gen": gen})

    async def publish(self, message: dict[str, Any]) -> None:
        payload = orjson.dumps({**message, "origin": self.origin})
        await self.link.publish(self.channel, payload)

    # ------------------------------------------------------------ subscriber
    async def start(self, on_purge: PurgeHandler, on_reconnect: Callable[[], object]) -> None:
        """Read the generation now (bounded by redis.timeout) so L2 serves from the first
        request, then follow purges in the background."""
        try:
            await self._read_generation()
        except RedisUnavailable as exc:
            log.warning("cache L2 unused until Redis answers: %s", exc)
        subscribed_before = False

        async def connected(client: Any) -> None:
            nonlocal subscribed_before
            await self._read_generation()
            if subscribed_before:
                # Purges may have been missed while we were away: forget L1 rather than
                # serve something an operator purged.
                on_reconnect()
            subscribed_before = True

        def lost() -> None:
            self.gen = None  # L2 unused until the generation is known again

        self._subscription = Subscription(
            self.link, self.channel, lambda data: self._dispatch(data, on_purge),
            connected, lost, name="cache purges")
        self._subscription.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def _read_generation(self) -> None:
        raw = await self.link.call(lambda: self.link.client.get(f"{self.prefix}gen"))
        self.gen = int(raw or 0)

    def _dispatch(self, data: bytes, on_purge: PurgeHandler) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("ignoring a malformed cache purge message")
            return
        if isinstance(message, dict):
            if "gen" in message and isinstance(message["gen"], int):
                self.gen = max(self.gen or 0, message["gen"])
            on_purge(message)


def store_head(sha: str) -> bytes:
    """The cache_store_variant EVALSHA (sha, 1 key, variant, data, keep, MAX_VARIANTS) in
    RESP with `%` slots for what changes: script_command's bytes in one format, since the
    store is on every storable miss."""
    return (b"*8\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n$1\r\n1\r\n" % (len(sha), sha.encode())
            + b"$%d\r\n%s\r\n" * 3 + b"$%d\r\n%d\r\n" + bulk(b"%d" % MAX_VARIANTS))


def store_command(head: bytes, key: str, variant: str, data: bytes, keep: int,
                  reload: bytes) -> Command:
    raw_key, raw_variant = key.encode("utf-8", "surrogateescape"), variant.encode()
    return Command(head % (len(raw_key), raw_key, len(raw_variant), raw_variant, len(data),
                           data, len(b"%d" % keep), keep), key, reload)


def _skipped_store(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.debug("cache L2 store skipped: %s", exc)


__all__ = ["RedisStore", "decode"]
