"""Rate limits through a real gateway and upstream: responses, headers and actions.

These use the in-process store (no redis block) unless a test says otherwise; the store
semantics themselves are proven in test_ratelimit_stores.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway import metrics
from gateway.metrictally import TALLY
from tests.harness import InProcessGateway, Upstream, base_config, client_session


def limited_config(upstream: Upstream, rules: dict[str, dict[str, Any]],
                   route_rules: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    config = base_config(upstream.url, rate_limits=rules, **extra)
    config["routes"][0]["rate_limits"] = route_rules or list(rules)
    return config


# A sliding window by default: a fixed one restarts at each whole minute of the clock, which
# may fall between the requests a test counts.
def rule(limit: int, window: str = "60s", algorithm: str = "sliding_window", **kw: Any
         ) -> dict[str, Any]:
    return {"algorithm": algorithm, "scope": "user", "limit": limit, "window": window, **kw}


async def statuses(url: str, n: int, user: str = "u1", **headers: str) -> list[int]:
    out = []
    async with client_session() as s:
        for _ in range(n):
            async with s.get(f"{url}/x", headers={"X-User-Id": user, **headers}) as r:
                await r.read()
                out.append(r.status)
    return out


def decisions(rule: str, outcome: str) -> float:
    TALLY.apply_all()  # as /metrics does before it renders
    value = metrics.RATELIMIT_DECISIONS.labels(rule, outcome)._value.get()
    return float(value)


async def test_reject_answers_429_problem_with_retry_after_and_policies(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(limited_config(
        upstream, {"per_user": rule(2, "30s", "sliding_window")}))
    before = decisions("per_user", "limited")
    assert await statuses(gw.url, 2) == [200, 200]
    async with client_session() as s, s.get(f"{gw.url}/x", headers={"X-User-Id": "u1"}) as r:
        body = orjson.loads(await r.read())
        assert r.status == 429
        assert r.headers["Content-Type"] == "application/problem+json"
        assert 1 <= int(r.headers["Retry-After"]) <= 30
        assert body["violated-policies"] == ["per_user"]
        assert body["status"] == 429
        assert r.headers["RateLimit"] == '"per_user";r=0;t=' + r.headers["Retry-After"]
    assert upstream.count("/x") == 2
    assert decisions("per_user", "limited") == before + 1
    assert await statuses(gw.url, 1, user="u2") == [200]  # other users keep their own quota


async def test_retry_after_is_never_earlier_than_admission(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(
        upstream, {"spaced": rule(1, "1s", "leaky_bucket")}))
    assert await statuses(gw.url, 1) == [200]
    async with client_session() as s, s.get(f"{gw.url}/x", headers={"X-User-Id": "u1"}) as r:
        assert r.status == 429
        wait = int(r.headers["Retry-After"])
    assert wait == 1
    await asyncio.sleep(wait)
    assert await statuses(gw.url, 1) == [200]


@pytest.mark.parametrize("style, present, absent", [
    ("ietf", {"RateLimit-Policy": '"tight";q=3;w=60', "RateLimit": '"tight";r=2;t=60'},
     ["X-RateLimit-Limit"]),
    ("legacy", {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "2",
                "X-RateLimit-Reset": "60"}, ["RateLimit", "RateLimit-Policy"]),
    ("both", {"RateLimit": '"tight";r=2;t=60', "X-RateLimit-Remaining": "2"}, []),
    ("none", {}, ["RateLimit", "RateLimit-Policy", "X-RateLimit-Limit"]),
])
async def test_header_styles_name_the_most_restrictive_rule(
        gateway_factory: Callable[..., Any], upstream: Upstream, style: str,
        present: dict[str, str], absent: list[str]) -> None:
    rules = {"loose": rule(100, algorithm="sliding_window"),
             "tight": rule(2, algorithm="sliding_window", burst=1)}
    gw = await gateway_factory(limited_config(upstream, rules, rate_limit_headers=style))
    async with client_session() as s, s.get(f"{gw.url}/x", headers={"X-User-Id": "u"}) as r:
        assert r.status == 200
        for name, value in present.items():
            assert r.headers[name] == value
        for name in absent:
            assert name not in r.headers


async def test_no_penalty_across_rules(gateway_factory: Callable[..., Any],
                                       upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(
        upstream, {"a": rule(10), "b": rule(5)}, route_rules=["a", "b"]))
    before = {(r, o): decisions(r, o) for r in "ab" for o in ("allowed", "limited")}
    codes = await statuses(gw.url, 8)
    assert codes == [200] * 5 + [429] * 3
    # Every rule of every request is counted: both allowed 5 times, then a allowed, b limited.
    assert {k: decisions(*k) - v for k, v in before.items()} == {
        ("a", "allowed"): 8, ("a", "limited"): 0, ("b", "allowed"): 5, ("b", "limited"): 3}
    state = await gw.process.pipeline.runtime.limiter.state("a", "u1")  # type: ignore[attr-defined]
    assert state["remaining"] == 5


async def test_rule_without_scope_value_is_skipped_and_tiers_apply(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    rules = {"per_user": rule(1, tiers={"gold": {"limit": 3}})}
    gw = await gateway_factory(limited_config(upstream, rules))
    async with client_session() as s:
        for _ in range(3):  # no X-User-Id: the user rule does not apply
            async with s.get(f"{gw.url}/x") as r:
                assert r.status == 200
                assert "RateLimit" not in r.headers
    assert await statuses(gw.url, 2, user="free-user") == [200, 429]
    assert await statuses(gw.url, 4, user="gold-user", **{"X-Subscription-Tier": "gold"}) \
        == [200, 200, 200, 429]


async def test_cost_of_a_route(gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    config = limited_config(upstream, {"units": rule(10)})
    config["routes"][0]["cost"] = 4
    gw = await gateway_factory(config)
    assert await statuses(gw.url, 3) == [200, 200, 429]


async def test_shadow_rule_reports_but_never_refuses(gateway_factory: Callable[..., Any],
                                                     upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(upstream, {"probe": rule(2, shadow=True)}))
    before = decisions("probe", "shadow_limited")
    async with client_session() as s:
        for i in range(4):
            async with s.get(f"{gw.url}/x", headers={"X-User-Id": "u"}) as r:
                assert r.status == 200
                remaining = 1 - i if i < 2 else 0
                assert r.headers["RateLimit"].startswith(f'"probe";r={remaining};')
    assert decisions("probe", "shadow_limited") == before + 2
    assert upstream.count("/x") == 4


async def test_degrade_forwards_marked_to_the_cheaper_upstream(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    replica = await Upstream().start()
    try:
        config = limited_config(upstream, {"heavy": rule(1, action="degrade",
                                                         degrade_upstream="replica")})
        config["upstreams"]["replica"] = {"url": replica.url}
        gw = await gateway_factory(config)
        assert await statuses(gw.url, 3) == [200, 200, 200]
        assert upstream.count("/x") == 1 and replica.count("/x") == 2
        assert "X-RateLimit-Degraded" not in upstream.hits[0].headers
        assert replica.hits[0].headers["X-RateLimit-Degraded"] == "heavy"
    finally:
        await replica.stop()


async def test_delay_waits_until_admission_then_forwards(gateway_factory: Callable[..., Any],
                                                         upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(upstream, {
        "paced": rule(1, "500ms", "leaky_bucket", action="delay", max_wait="2s")}))
    before = decisions("paced", "delayed")
    started = time.monotonic()
    codes = await asyncio.gather(*(statuses(gw.url, 1) for _ in range(3)))
    assert codes == [[200]] * 3
    # Three spaced by 500 ms: the last one was held about 1 s before it went upstream.
    assert time.monotonic() - started >= 0.99
    assert decisions("paced", "delayed") == before + 2


async def test_delay_refuses_when_admission_is_beyond_max_wait(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(upstream, {
        "paced": rule(1, "10s", "leaky_bucket", action="delay", max_wait="200ms")}))
    started = time.monotonic()
    assert await statuses(gw.url, 2) == [200, 429]
    assert time.monotonic() - started < 5  # refused at once, not after waiting


async def test_queue_admits_in_arrival_order_and_bounds_the_lane(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(upstream, {
        # 600 ms a place: the fifth arrival (~0.15 s) comes long before the first frees one.
        "fifo": rule(1, "600ms", "leaky_bucket", action="queue", max_wait="3s",
                     queue_size=3)}))
    order: list[int] = []

    async def one(i: int) -> int:
        headers = {"X-User-Id": "u", "X-N": str(i)}
        async with client_session() as s, s.get(f"{gw.url}/x", headers=headers) as r:
            await r.read()
            if r.status == 200:
                order.append(i)
            return r.status

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0.03)  # arrivals in a known order
    codes = await asyncio.gather(*tasks)
    # The first goes at once; three wait in the lane (queue_size 3); the rest are refused.
    assert codes == [200, 200, 200, 200, 429, 429]
    assert order == [0, 1, 2, 3]
    assert [int(h.headers["X-N"]) for h in upstream.hits] == [0, 1, 2, 3]


async def test_held_request_is_dropped_when_the_client_goes_away(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(upstream, {
        "fifo": rule(1, "1s", "leaky_bucket", action="queue", max_wait="3s")}))
    assert await statuses(gw.url, 1) == [200]
    async with client_session() as s:
        with pytest.raises(asyncio.TimeoutError):
            async with s.get(f"{gw.url}/x", headers={"X-User-Id": "u1"},
                             timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                await r.read()
    await asyncio.sleep(1.2)  # past the moment the held request would have been admitted
    assert upstream.count("/x") == 1
    limiter = gw.process.pipeline.runtime.limiter
    assert not limiter.lanes._lanes  # type: ignore[attr-defined]
    assert await statuses(gw.url, 1) == [200]  # its slot was not consumed


async def test_counters_survive_a_reload(gateway_factory: Callable[..., Any],
                                         upstream: Upstream) -> None:
    gw = await gateway_factory(limited_config(upstream, {"per_user": rule(2)}))
    assert await statuses(gw.url, 1) == [200]
    ok, _ = await gw.process.reload()
    assert ok
    assert await statuses(gw.url, 2) == [200, 429]


async def test_admin_state_and_reset(gateway_factory: Callable[..., Any],
                                     upstream: Upstream) -> None:
    rules = {"per_user": rule(3, algorithm="token_bucket"),
             "per_key": {"algorithm": "sliding_window", "scope": "api_key", "limit": 2,
                         "window": "60s"}}
    gw = await gateway_factory(limited_config(upstream, rules))
    limiter = gw.process.pipeline.runtime.limiter
    assert await statuses(gw.url, 2, **{"X-Api-Key": "secret-1"}) == [200, 200]
    state = await limiter.state("per_user", "u1")
    assert state["remaining"] == 1 and state["quota"] == 3 and state["store"] == "local"
    assert (await limiter.state("per_key", "secret-1"))["remaining"] == 0
    await limiter.reset("per_key", "secret-1")
    assert (await limiter.state("per_key", "secret-1"))["remaining"] == 2
    with pytest.raises(KeyError):
        await limiter.state("nope", "u1")
