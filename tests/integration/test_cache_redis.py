"""The cache's shared layer: L2 in a private redis-server, purges across gateway processes,
and Redis trouble turning the cache into a pass-through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.cache import CacheService
from gateway.config.model import CacheSettings
from gateway.redisconn import RedisLink
from tests.harness import (
    GatewayProcessHandle,
    InProcessGateway,
    RedisServer,
    Upstream,
    free_port,
)
from tests.integration.test_cache import Factory, cached_config, counting, get
from tests.rediscluster import RedisBackend, single_backend

HOST = "shop.example"  # sidecars of one service see the same Host; the key includes it


def shared_config(upstream: Upstream, redis: RedisServer | RedisBackend,
                  timeout: str = "1s") -> dict[str, Any]:
    """`timeout`: a second, so that stores and lookups land however busy the machine (a
    cluster node's first call from a process opens its connection); the tests of a Redis
    gone or hung ask for a short one."""
    config = cached_config(upstream.url)
    backend = redis if isinstance(redis, RedisBackend) else single_backend(redis)
    config["redis"] = backend.config(timeout=timeout, key_prefix="t:")
    config["cache"]["redis"] = True
    return config


def second(config: dict[str, Any]) -> dict[str, Any]:
    other = dict(config, listen={"host": "127.0.0.1", "port": free_port()},
                 admin={"host": "127.0.0.1", "port": free_port()})
    return other


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def stored(redis: RedisBackend) -> bool:
    """An entry is in L2 (written whole, by one script)."""
    return bool(redis.keys("t:cache:*:u:*"))


async def connected_cache(gw: InProcessGateway) -> CacheService:
    """The gateway's cache service once its L2 knows the purge generation."""
    assert gw.process.services is not None
    svc = gw.process.services.cache
    assert svc is not None and svc.l2 is not None
    l2 = svc.l2
    await wait_for(lambda: l2.gen is not None)
    return svc


async def test_l2_hit_in_a_second_process(upstream: Upstream, redis_backend: RedisBackend,
                                          process_factory: Callable[..., GatewayProcessHandle]
                                          ) -> None:
    upstream.on("/market/shared", counting(Cache_Control="max-age=60"))
    config = shared_config(upstream, redis_backend)
    one = process_factory(config, name="one.yaml")
    two = process_factory(second(config), name="two.yaml")
    _, headers, body = await get(f"{one.url}/market/shared", Host=HOST)
    assert headers["X-Cache"] == "MISS"
    await wait_for(lambda: stored(redis_backend))
    _, headers, body2 = await get(f"{two.url}/market/shared", Host=HOST)
    assert headers["X-Cache"] == "HIT" and body2 == body
    assert upstream.count("/market/shared") == 1
    assert redis_backend.keys("t:cache:*")  # prefixed with redis.key_prefix


async def test_tag_purge_reaches_two_processes_and_redis(
        upstream: Upstream, redis_backend: RedisBackend,
        process_factory: Callable[..., GatewayProcessHandle]) -> None:
    upstream.on("/market/p42", counting(Cache_Control="max-age=60", Surrogate_Key="p42 prices"))
    upstream.on("/market/other", counting(Cache_Control="max-age=60", Surrogate_Key="other"))
    config = shared_config(upstream, redis_backend)
    one = process_factory(config, name="one.yaml")
    two = process_factory(second(config), name="two.yaml")
    for path in ("/market/p42", "/market/other"):
        await get(f"{one.url}{path}", Host=HOST)
    # the second process is to find them in L2: the stores follow the answers
    await wait_for(lambda: len(redis_backend.keys("t:cache:0:u:*")) == 2)
    for path in ("/market/p42", "/market/other"):
        await get(f"{two.url}{path}", Host=HOST)
    for gw in (one, two):  # both now hold both in L1
        for path in ("/market/p42", "/market/other"):
            _, headers, _ = await get(f"{gw.url}{path}", Host=HOST)
            assert headers["X-Cache"] == "HIT"

    assert upstream.count("/market/p42") == 1  # the second process had it from L2

    # A third instance (this test) purges through the same Redis.
    settings = redis_backend.settings(key_prefix="t:", timeout=1.0)
    link = RedisLink(settings)
    purger = CacheService(CacheSettings(redis=True), link)
    await purger.start()
    try:
        await wait_for(lambda: purger.l2 is not None and purger.l2.gen is not None)
        await purger.purge_tag("prices")
    finally:
        await purger.close()
        await link.close()
    for gw in (one, two):  # forgotten in both L1s (once the message is there) and in Redis
        for _ in range(100):
            _, headers, body = await get(f"{gw.url}/market/p42", Host=HOST)
            if body != b"payload-1":
                break
            await asyncio.sleep(0.05)
        assert body != b"payload-1"
        _, other, _ = await get(f"{gw.url}/market/other", Host=HOST)
        assert other["X-Cache"] == "HIT"  # another tag: untouched
    assert upstream.count("/market/p42") == 2  # refetched once, then shared again through L2


async def test_purge_all_bumps_generation_across_processes(
        gateway_factory: Factory, upstream: Upstream, redis_backend: RedisBackend) -> None:
    upstream.on("/market/a", counting(Cache_Control="max-age=60"))
    config = shared_config(upstream, redis_backend)
    one = await gateway_factory(config, name="one.yaml")
    two = await gateway_factory(second(config), name="two.yaml")
    svc_one, svc_two = await connected_cache(one), await connected_cache(two)
    await get(f"{one.url}/market/a", Host=HOST)
    await wait_for(lambda: stored(redis_backend))
    _, headers, _ = await get(f"{two.url}/market/a", Host=HOST)
    assert headers["X-Cache"] == "HIT" and len(svc_two.memory) == 1
    await svc_one.purge_all()
    await wait_for(lambda: len(svc_two.memory) == 0)
    _, headers, body = await get(f"{two.url}/market/a", Host=HOST)
    assert headers["X-Cache"] == "MISS" and body == b"payload-2"


async def test_url_purge_deletes_the_l2_entry(gateway_factory: Factory, upstream: Upstream,
                                              redis_backend: RedisBackend) -> None:
    upstream.on("/market/u", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(shared_config(upstream, redis_backend))
    svc = await connected_cache(gw)
    await get(f"{gw.url}/market/u", Host=HOST)
    await wait_for(lambda: stored(redis_backend))
    await svc.purge_url(f"http://{HOST}/market/u")
    assert redis_backend.keys("t:cache:0:u:*") == []


async def test_redis_stopped_cache_passes_through(gateway_factory: Factory,
                                                  upstream: Upstream,
                                                  redis_server: RedisServer) -> None:
    upstream.on("/market/a", counting(Cache_Control="max-age=60"))
    upstream.on("/market/b", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(shared_config(upstream, redis_server, timeout="100ms"))
    await connected_cache(gw)
    await get(f"{gw.url}/market/a", Host=HOST)
    redis_server.kill()
    for _ in range(5):
        status, headers, _ = await get(f"{gw.url}/market/a", Host=HOST)
        assert status == 200 and headers["X-Cache"] == "HIT"  # L1 still serves
        status, headers, _ = await get(f"{gw.url}/market/b", Host=HOST)
        assert status == 200
    assert upstream.count("/market/b") == 1  # stored in L1 even while Redis is gone


async def test_redis_hung_cache_answers_within_the_deadline(
        gateway_factory: Factory, upstream: Upstream, redis_server: RedisServer) -> None:
    upstream.on("/market/x*", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(shared_config(upstream, redis_server, timeout="100ms"))
    await connected_cache(gw)
    redis_server.pause()
    try:
        results = await asyncio.gather(*(get(f"{gw.url}/market/x{i}", Host=HOST)
                                         for i in range(10)))
    finally:
        redis_server.resume()
    assert all(status == 200 for status, _, _ in results)
