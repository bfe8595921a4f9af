"""The response cache through the real gateway, over real sockets, against a counting upstream.

Each test names the rule it checks (RFC 9111 section, RFC 5861, RFC 9211/9213 or the issue).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.harness import InProcessGateway, Upstream, base_config, client_session

Factory = Callable[..., Awaitable[InProcessGateway]]


def cached_config(upstream_url: str, **cache: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"ttl": "30s", "tags_header": "Surrogate-Key",
                              "ignore_query": ["utm_source"]}
    policy.update(cache)
    config = base_config(upstream_url)
    config["cache"] = {"memory_max": "4MiB", "max_object_size": "64KiB"}
    config["routes"] = [
        {"name": "market", "match": {"path_prefix": "/market/"}, "upstream": "api",
         "cache": policy},
        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"},
    ]
    return config


def counting(body: bytes = b"payload", delay: float = 0.0, **headers: str
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler answering `body` (numbered by hit) with the given headers."""
    state = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        state["n"] += 1
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=body + b"-" + str(state["n"]).encode(),
                            headers={k.replace("_", "-"): v for k, v in headers.items()})

    return handler


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with client_session() as s, s.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def test_miss_then_hit_with_age_cache_status_and_x_cache(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/a", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    status, headers, body = await get(f"{gw.url}/market/a")
    assert (status, body) == (200, b"payload-1")
    assert headers["X-Cache"] == "MISS"
    assert headers["Cache-Status"] == "gateway; fwd=miss; fwd-status=200; stored"
    assert "Age" not in headers
    status, headers, body = await get(f"{gw.url}/market/a")
    assert (status, body) == (200, b"payload-1")
    assert headers["X-Cache"] == "HIT"
    assert headers["Cache-Status"].startswith("gateway; hit; ttl=")
    assert int(headers["Age"]) >= 0
    assert upstream.count("/market/a") == 1


async def test_route_without_cache_policy_is_not_cached(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/plain", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    for _ in range(2):
        status, headers, _ = await get(f"{gw.url}/plain")
        assert status == 200 and "X-Cache" not in headers
    assert upstream.count("/plain") == 2
