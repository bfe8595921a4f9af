"""Rate limits that cannot be walked around, through a real gateway and upstream: the
in-process store stays within `rate_limits_local_max_keys`, and a request that lacks a rule's
scope value is counted per address (`when_absent: ip`) or refused (`when_absent: reject`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY

from tests.harness import InProcessGateway, Upstream, base_config, client_session


def config_with(upstream: Upstream, rules: dict[str, dict[str, Any]], **extra: Any
                ) -> dict[str, Any]:
    config = base_config(upstream.url, rate_limits=rules, **extra)
    config["routes"][0]["rate_limits"] = list(rules)
    return config


def per_user(limit: int, **kw: Any) -> dict[str, Any]:
    # Sliding: a fixed window restarts at each whole minute, which may fall mid-test.
    return {"algorithm": "sliding_window", "scope": "user", "limit": limit, "window": "60s",
            **kw}


async def get(url: str, **headers: str) -> tuple[int, dict[str, Any] | None]:
    async with client_session() as s, s.get(f"{url}/x", headers=headers) as r:
        body = await r.json(content_type=None) if r.status >= 400 else None
        return r.status, body


async def statuses(url: str, n: int, **headers: str) -> list[int]:
    return [(await get(url, **headers))[0] for _ in range(n)]


def evictions() -> float:
    return REGISTRY.get_sample_value("gateway_ratelimit_local_evictions_total") or 0.0


# ---------------------------------------------------------------- the local store's bound

async def test_the_local_store_keeps_at_most_rate_limits_local_max_keys(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(config_with(
        upstream, {"per_user": per_user(1)}, rate_limits_local_max_keys=3))
    store = gw.process.services.limits_local  # type: ignore[union-attr]
    before = evictions()
    assert await statuses(gw.url, 2, **{"X-User-Id": "u0"}) == [200, 429]
    for i in range(1, 8):
        assert await statuses(gw.url, 1, **{"X-User-Id": f"u{i}"}) == [200]
        assert len(store.slots) <= 3
    assert await statuses(gw.url, 1, **{"X-User-Id": "u7"}) == [429]  # recent: still counted
    assert await statuses(gw.url, 1, **{"X-User-Id": "u0"}) == [200]  # forgotten: afresh
    assert evictions() - before == 6  # u0..u4 went for u3..u7, then u5 went for u0
    async with client_session() as s, s.get(f"{gw.admin_url}/metrics") as r:
        assert f"\ngateway_ratelimit_local_evictions_total {evictions()}\n" in await r.text()


# ---------------------------------------------------------------- when_absent

async def test_when_absent_ip_limits_anonymous_clients_per_address(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(config_with(
        upstream, {"per_user": per_user(2, when_absent="ip")}))
    assert await statuses(gw.url, 3) == [200, 200, 429]  # anonymous, from 127.0.0.1
    status, body = await get(gw.url)
    assert status == 429 and body is not None and body["violated-policies"] == ["per_user"]
    # Another client address (X-Forwarded-For from a trusted peer) has its own count.
    assert await statuses(gw.url, 3, **{"X-Forwarded-For": "198.51.100.4"}) == [200, 200, 429]
    # Identified users keep their own counters, even one whose id is that address.
    assert await statuses(gw.url, 3, **{"X-User-Id": "u1"}) == [200, 200, 429]
    assert await statuses(gw.url, 3, **{"X-User-Id": "127.0.0.1"}) == [200, 200, 429]


async def test_when_absent_reject_is_403_problem_and_consumes_nothing(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    rules = {"per_user": per_user(10, when_absent="reject"),
             "per_ip": {"algorithm": "sliding_window", "scope": "ip", "limit": 2,
                        "window": "60s"}}
    gw: InProcessGateway = await gateway_factory(config_with(upstream, rules))
    for _ in range(3):
        async with client_session() as s, s.get(f"{gw.url}/x") as r:
            assert r.status == 403
            assert r.content_type == "application/problem+json"
            assert "WWW-Authenticate" not in r.headers
            assert "RateLimit" not in r.headers  # no limit was consulted
            body = await r.json(content_type=None)
    assert body["policies"] == ["per_user"] and body["missing"] == ["user_id"]
    assert "user" in body["detail"] and body["request_id"]
    assert upstream.count() == 0
    # The refused requests took nothing from the per-address rule.
    assert await statuses(gw.url, 3, **{"X-User-Id": "u1"}) == [200, 200, 429]


async def test_admin_reads_and_resets_the_per_address_counter(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(config_with(
        upstream, {"per_user": per_user(2, when_absent="ip")}))
    assert await statuses(gw.url, 3) == [200, 200, 429]
    url = f"{gw.admin_url}/admin/ratelimits/per_user"
    async with client_session() as s:
        async with s.get(url, params={"ip": "127.0.0.1"}) as r:
            state = await r.json()
            assert r.status == 200 and state["remaining"] == 0 and state["by_ip"] is True
        async with s.get(url, params={"key": "127.0.0.1"}) as r:
            assert (await r.json())["remaining"] == 2  # a user with that id: untouched
        async with s.delete(url, params={"ip": "127.0.0.1"}) as r:
            assert r.status == 200
        async with s.get(url, params={"ip": "127.0.0.1", "key": "u1"}) as r:
            assert r.status == 400
    assert await statuses(gw.url, 1) == [200]
