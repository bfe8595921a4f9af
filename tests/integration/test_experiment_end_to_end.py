"""A real experiment run: two gateway processes sharing one Redis (a single server, then a
cluster), thousands of units.

Four experiments run at once on one route, each on its own flag: a true effect (conversions
sent to the events API) that must be detected; an A/A split (conversions measured by the
gateway on a route) that must not be; traffic skewed against one variant, which must be
flagged as a sample ratio mismatch; and a variant whose upstream answers 5xx, whose guardrail
must trip and kill its flag on both gateways.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import mmh3
from aiohttp import web

from tests.harness import GatewayProcessHandle, Upstream, base_config, client_session
from tests.rediscluster import RedisBackend

USERS = 2400


def split(name: str, second: str) -> dict[str, Any]:
    return {"type": "multivariate", "default": "control",
            "variants": [{"name": "control", "value": "control", "weight": 50},
                         {"name": second, "value": second, "weight": 50}]}


def config(upstream: Upstream, redis: RedisBackend) -> dict[str, Any]:
    c = base_config(upstream.url)
    c["redis"] = redis.config(timeout="1s")
    c["flags"] = {"f_effect": split("f_effect", "treatment"), "f_aa": split("f_aa", "twin"),
                  "f_srm": split("f_srm", "treatment"), "f_guard": split("f_guard", "broken")}
    purchase = {"name": "purchase", "primary": True, "baseline_rate": 0.1,
                "minimum_detectable_effect": 0.1}
    c["experiments"] = {
        "effect": {"flag": "f_effect", "control": "control", "status": "running",
                   "metrics": [purchase]},
        "aa": {"flag": "f_aa", "control": "control", "status": "running",
               "metrics": [{"name": "paid", "route": "pay", "status": "2xx", "primary": True,
                            "baseline_rate": 0.2, "minimum_detectable_effect": 0.1}]},
        "srm": {"flag": "f_srm", "control": "control", "status": "running",
                "metrics": [purchase]},
        "guard": {"flag": "f_guard", "control": "control", "status": "running",
                  "auto_stop": True, "sequential": True,
                  "metrics": [{"name": "errors", "type": "error_rate", "guardrail": True,
                               "goal": "decrease"}]},
    }
    c["routes"] = [{"name": "pay", "match": {"path_prefix": "/pay"}, "upstream": "api"},
                   {"name": "shop", "match": {"path_prefix": "/"}, "upstream": "api",
                    "flags": "all"}]
    return c


def variant(flag: str, unit: str, second: str) -> str:
    """flagd's fractional bucketing, as the gateway does it: murmur3 of flag key + unit."""
    return "control" if mmh3.hash(flag + unit, 0, False) * 100 >> 32 < 50 else second


async def admin_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_two_gateways_detect_effects_srm_and_trip_a_guardrail_on_both(
        process_factory: Callable[..., GatewayProcessHandle], redis_backend: RedisBackend,
        upstream: Upstream) -> None:
    async def shop(request: web.Request) -> web.Response:
        broken = request.headers.get("X-Flag-F-Guard") == "broken"
        return web.json_response({"headers": list(request.headers.items())},
                                 status=503 if broken else 200)

    upstream.on("/shop", shop)
    gateways = [process_factory(config(upstream, redis_backend)) for _ in range(2)]
    rng = random.Random(11)
    users = [f"user-{i}" for i in range(USERS)]
    # Skewed traffic: a third of f_srm's treatment units never arrive.
    arriving = [u for u in users if variant("f_srm", u, "treatment") == "control"
                or rng.random() > 1 / 3]
    # A/A: 20% of units pay, whatever their arm. Drawn here, in a fixed order, so that the
    # run is the same whichever request the gateways answer first.
    paying = {u for u in arriving if rng.random() < 0.2}
    async with client_session() as s:
        async def visit(i: int, user: str) -> None:
            gw = gateways[i % 2]
            async with s.get(f"{gw.url}/shop", headers={"X-User-Id": user}) as r:
                await r.read()
            if user in paying:
                async with s.post(f"{gw.url}/pay", headers={"X-User-Id": user}) as r:
                    await r.read()

        for start in range(0, len(arriving), 60):
            await asyncio.gather(*(visit(start + i, u)
                                   for i, u in enumerate(arriving[start:start + 60])))
        # The true effect: 10% of control units buy, 25% of treatment units.
        events = [{"experiment": "effect", "unit": u, "metric": "purchase",
                   "event_id": f"order-{u}"} for u in arriving
                  if rng.random() < (0.25 if variant("f_effect", u, "treatment") ==
                                     "treatment" else 0.10)]
        for start in range(0, len(events), 1000):
            async with s.post(f"{gateways[1].admin_url}/admin/events",
                              json=events[start:start + 1000]) as r:
                assert r.status == 202, await r.text()

        admin = gateways[0].admin_url
        deadline = time.monotonic() + 20
        while True:
            reports = {name: await admin_json(s, f"{admin}/admin/experiments/{name}")
                       for name in ("effect", "aa", "srm", "guard")}
            conversions = sum(v["count"] for v in
                              reports["effect"]["metrics"][0]["variants"].values())
            settled = sum(reports["effect"]["units"].values()) == len(arriving) and \
                conversions == len(events) and reports["guard"]["stopped_by_guardrail"]
            if settled or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)

        assert sum(reports["effect"]["units"].values()) == len(arriving)  # once each, both gateways
        assert conversions == len(events)
        effect = reports["effect"]
        assert (effect["status"], effect["variant"], effect["direction"]) == \
            ("significant", "treatment", "winner"), effect
        assert reports["aa"]["status"] in ("collecting", "no_effect"), reports["aa"]
        paid = reports["aa"]["metrics"][0]["variants"]
        assert sum(v["count"] for v in paid.values()) > 300  # the route metric counted
        assert reports["srm"]["status"] == "srm" and reports["srm"]["srm"]["mismatch"]
        assert reports["guard"]["status"] == "guardrail_tripped", reports["guard"]
        assert "broken" in reports["guard"]["stopped_by_guardrail"]

        # The kill switch reaches both gateways within a second of the trip.
        await asyncio.sleep(1.0)
        for gw in gateways:
            for user in users[:40]:
                async with s.get(f"{gw.url}/shop", headers={"X-User-Id": user}) as r:
                    assert r.status == 200
                    seen = dict((await r.json())["headers"])
                    assert seen["X-Flag-F-Guard"] == "control"
