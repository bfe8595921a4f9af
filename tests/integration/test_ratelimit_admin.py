"""GET and DELETE /admin/ratelimits/{rule}?key=...: one key's state, and its reset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import (
    InProcessGateway,
    RedisServer,
    Upstream,
    base_config,
    client_session,
    require_admin_token,
)


def limited_config(upstream: Upstream, redis: RedisServer | None = None) -> dict[str, Any]:
    config = base_config(upstream.url)
    config["rate_limits"] = {
        "per_user": {"algorithm": "sliding_window", "scope": "user", "limit": 3, "window": "60s"},
        "unused": {"algorithm": "token_bucket", "scope": "user", "limit": 3, "window": "60s"},
    }
    config["routes"][0]["rate_limits"] = ["per_user"]
    if redis is not None:
        # A second: a decision past the deadline would be admitted uncounted (failure_mode
        # open), however healthy Redis is; the test of a Redis gone does not wait for it.
        config["redis"] = {"url": redis.url, "timeout": "1s"}
    return config


async def run_state_and_reset(gw: InProcessGateway) -> None:
    async with client_session() as s:
        for _ in range(3):
            async with s.get(f"{gw.url}/x", headers={"X-User-Id": "u1"}) as r:
                assert r.status == 200
        async with s.get(f"{gw.url}/x", headers={"X-User-Id": "u1"}) as r:
            assert r.status == 429
        async with s.get(f"{gw.admin_url}/admin/ratelimits/per_user?key=u1") as r:
            assert r.status == 200
            state = await r.json()
            assert state["remaining"] == 0 and state["limit"] == 3
            assert state["rule"] == "per_user" and state["key"] == "u1"
        async with s.get(f"{gw.admin_url}/admin/ratelimits/per_user?key=u2") as r:
            assert (await r.json())["remaining"] == 3
        async with s.delete(f"{gw.admin_url}/admin/ratelimits/per_user?key=u1") as r:
            assert r.status == 200
        async with s.get(f"{gw.url}/x", headers={"X-User-Id": "u1"}) as r:
            assert r.status == 200


async def test_state_and_reset_in_process(gateway_factory: Callable[..., Any],
                                          upstream: Upstream) -> None:
    await run_state_and_reset(await gateway_factory(limited_config(upstream)))


async def test_state_and_reset_in_redis(gateway_factory: Callable[..., Any], upstream: Upstream,
                                        redis_server: RedisServer) -> None:
    await run_state_and_reset(await gateway_factory(limited_config(upstream, redis_server)))


async def test_bad_calls_are_specific_problems(gateway_factory: Callable[..., Any],
                                               upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(upstream))
    async with client_session() as s:
        async with s.get(f"{gw.admin_url}/admin/ratelimits/per_usr?key=u1") as r:
            assert r.status == 404
            assert "did you mean 'per_user'" in (await r.json(content_type=None))["detail"]
        async with s.get(f"{gw.admin_url}/admin/ratelimits/per_user") as r:
            assert r.status == 400
            assert "?key=" in (await r.json(content_type=None))["detail"]
        async with s.get(f"{gw.admin_url}/admin/ratelimits/unused?key=u1") as r:
            assert r.status == 200 and (await r.json())["remaining"] == 3


async def test_no_limited_route_is_404(gateway_factory: Callable[..., Any],
                                       upstream: Upstream) -> None:
    config = limited_config(upstream)
    del config["routes"][0]["rate_limits"]
    gw = await gateway_factory(config)
    async with client_session() as s:
        async with s.get(f"{gw.admin_url}/admin/ratelimits/per_user?key=u1") as r:
            assert r.status == 404
            assert "no route applies" in (await r.json(content_type=None))["detail"]


async def test_reset_needs_the_token(gateway_factory: Callable[..., Any], upstream: Upstream,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = limited_config(upstream)
    auth = require_admin_token(config, monkeypatch)
    gw = await gateway_factory(config)
    url = f"{gw.admin_url}/admin/ratelimits/per_user?key=u1"
    async with client_session() as s:
        async with s.delete(url) as r:
            assert r.status == 401
        async with s.delete(url, headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with s.delete(url, headers=auth) as r:
            assert r.status == 200
        async with s.get(url) as r:
            assert r.status == 401  # other clients' quotas are not public either
        async with s.get(url, headers=auth) as r:
            assert r.status == 200


async def test_redis_down_is_503(gateway_factory: Callable[..., Any], upstream: Upstream,
                                 redis_server: RedisServer) -> None:
    gw = await gateway_factory(limited_config(upstream, redis_server))
    redis_server.kill()
    async with client_session() as s:
        async with s.get(f"{gw.admin_url}/admin/ratelimits/per_user?key=u1") as r:
            assert r.status == 503
        async with s.delete(f"{gw.admin_url}/admin/ratelimits/per_user?key=u1") as r:
            assert r.status == 503
            assert "nothing was reset" in (await r.json(content_type=None))["detail"]
