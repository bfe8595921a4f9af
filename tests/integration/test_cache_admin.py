"""POST /admin/cache/purge: by URL, tag and all; every worker forgets; bad bodies are 400."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.harness import (
    GatewayProcessHandle,
    RedisServer,
    Upstream,
    base_config,
    client_session,
    require_admin_token,
)


def cached_config(upstream: Upstream) -> dict[str, Any]:
    config = base_config(upstream.url)
    config["routes"][0]["cache"] = {"ttl": "1h", "tags_header": "Surrogate-Key"}
    return config


def serve_versions(upstream: Upstream) -> dict[str, str]:
    state = {"version": "v1"}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.path}:{state['version']}", headers={
            "Cache-Control": "max-age=3600", "Surrogate-Key": "product-42 prices"})

    upstream.on("/p/*", page)
    return state


async def get(s: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    async with s.get(url) as r:
        return await r.text(), r.headers.get("X-Cache", "")


async def test_purge_by_url_tag_and_all(gateway_factory: Callable[..., Any],
                                        upstream: Upstream) -> None:
    state = serve_versions(upstream)
    gw = await gateway_factory(cached_config(upstream))
    purge = f"{gw.admin_url}/admin/cache/purge"
    async with client_session() as s:
        for path in ("/p/a", "/p/b", "/p/c"):
            await get(s, f"{gw.url}{path}")
            assert (await get(s, f"{gw.url}{path}"))[1] == "HIT"
        state["version"] = "v2"
        async with s.post(purge, json={"url": f"{gw.url}/p/a"}) as r:
            assert r.status == 200, await r.text()
        assert await get(s, f"{gw.url}/p/a") == ("/p/a:v2", "MISS")
        assert (await get(s, f"{gw.url}/p/b"))[0] == "/p/b:v1"
        async with s.post(purge, json={"tag": "product-42"}) as r:
            assert r.status == 200
        assert (await get(s, f"{gw.url}/p/b"))[0] == "/p/b:v2"
        state["version"] = "v3"
        async with s.post(purge, json={"all": True}) as r:
            assert r.status == 200
        for path in ("/p/a", "/p/b", "/p/c"):
            assert (await get(s, f"{gw.url}{path}"))[0] == f"{path}:v3"


async def test_bad_purge_bodies(gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(cached_config(upstream))
    purge = f"{gw.admin_url}/admin/cache/purge"
    cases = [
        (b"{nope", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b"{}", "exactly one"),
        (b'{"url": "http://x/a", "tag": "t"}', "exactly one"),
        (b'{"urll": "http://x/a"}', "unknown field"),
        (b'{"all": "yes"}', '"all" must be true'),
        (b'{"tag": ""}', "non-empty string"),
        (b'{"url": "/relative"}', "absolute http(s) URL"),
    ]
    async with client_session() as s:
        for body, expected in cases:
            async with s.post(purge, data=body) as r:
                assert r.status == 400, body
                assert r.headers["Content-Type"] == "application/problem+json"
                assert expected in (await r.json(content_type=None))["detail"], body


async def test_purge_needs_the_token(gateway_factory: Callable[..., Any], upstream: Upstream,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = cached_config(upstream)
    auth = require_admin_token(config, monkeypatch)
    gw = await gateway_factory(config)
    purge = f"{gw.admin_url}/admin/cache/purge"
    async with client_session() as s:
        async with s.post(purge, json={"all": True}) as r:
            assert r.status == 401
        async with s.post(purge, json={"all": True}, headers=auth) as r:
            assert r.status == 200


async def test_purge_reaches_every_worker_without_redis(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream) -> None:
    state = serve_versions(upstream)
    gw = process_factory(cached_config(upstream), workers=2)
    fresh = {"connector": aiohttp.TCPConnector(force_close=True)}
    async with aiohttp.ClientSession(**fresh) as s:  # type: ignore[arg-type]
        # New connections spread over both workers: go on until each has stored a copy.
        for _ in range(200):
            await get(s, f"{gw.url}/p/x")
            if upstream.count("/p/x") == 2:
                break
        assert upstream.count("/p/x") == 2, "both workers should have missed once"
        state["version"] = "v2"
        async with s.post(f"{gw.admin_url}/admin/cache/purge", json={"all": True}) as r:
            assert r.status == 200
        bodies = {(await get(s, f"{gw.url}/p/x"))[0] for _ in range(40)}
    assert bodies == {"/p/x:v2"}


async def test_purge_with_redis_down_says_others_were_not_told(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_server: RedisServer) -> None:
    serve_versions(upstream)
    config = cached_config(upstream)
    config["redis"] = {"url": redis_server.url, "timeout": "100ms"}
    config["cache"] = {"redis": True}
    gw = await gateway_factory(config)
    async with client_session() as s:
        await get(s, f"{gw.url}/p/a")
        redis_server.kill()
        async with s.post(f"{gw.admin_url}/admin/cache/purge", json={"all": True}) as r:
            assert r.status == 503
            assert "other instances were not told" in (await r.json(content_type=None))["detail"]
        assert (await get(s, f"{gw.url}/p/a"))[1] != "HIT"  # this process did forget it
