"""Experiments through the real gateway: exposures, events, route metrics, status changes
and guardrails, with the in-process store (test_experiment_end_to_end.py runs two gateways
on a shared Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway import metrics
from tests.harness import InProcessGateway, Upstream, base_config, client_session


def experiment_config(upstream: Upstream, **experiment: Any) -> dict[str, Any]:
    config = base_config(upstream.url)
    config["flags"] = {"checkout": {
        "type": "multivariate", "default": "control",
        "variants": [{"name": "control", "value": "control", "weight": 50},
                     {"name": "treatment", "value": "treatment", "weight": 50}]}}
    config["experiments"] = {"checkout_test": {
        "flag": "checkout", "control": "control", "status": "running",
        "metrics": [{"name": "purchase", "primary": True, "baseline_rate": 0.1,
                     "minimum_detectable_effect": 0.05},
                    {"name": "order_value", "type": "mean"},
                    {"name": "paid", "route": "pay", "status": "2xx"},
                    {"name": "errors", "type": "error_rate", "guardrail": True,
                     "goal": "decrease"},
                    {"name": "latency", "type": "latency", "guardrail": True,
                     "goal": "decrease"}],
        **experiment}}
    config["routes"] = [
        {"name": "pay", "match": {"path_prefix": "/pay"}, "upstream": "api"},
        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api",
         "flags": ["checkout"]}]
    return config


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll an async check until it returns something truthy (records flush off the path)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def report(gw: InProcessGateway, name: str = "checkout_test") -> dict[str, Any]:
    async with client_session() as s, s.get(f"{gw.admin_url}/admin/experiments/{name}") as r:
        assert r.status == 200, await r.text()
        found: dict[str, Any] = await r.json()
        return found


async def browse(gw: InProcessGateway, users: range, path: str = "/shop") -> dict[str, str]:
    """One request per user; the variant each was served (the flag header the upstream got)."""
    served: dict[str, str] = {}
    async with client_session() as s:
        for user in users:
            async with s.get(f"{gw.url}{path}", headers={"X-User-Id": f"u{user}"}) as r:
                body = await r.json()
                served[f"u{user}"] = dict(body["headers"])["X-Flag-Checkout"]
    return served


async def test_a_unit_is_counted_once_in_the_variant_of_its_first_exposure(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(experiment_config(upstream))
    served = await browse(gw, range(200))
    await browse(gw, range(200))  # again: the same units, nothing new to count

    async def counted() -> dict[str, Any] | None:
        found = await report(gw)
        return found if sum(found["units"].values()) >= 200 and found["started"] else None

    found = await until(counted)
    expected = {v: sum(1 for x in served.values() if x == v) for v in ("control", "treatment")}
    assert found["units"] == expected
    assert found["lifecycle"] == "running" and found["started"] is not None


async def test_events_keep_the_good_items_and_name_each_bad_one(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(experiment_config(upstream))
    served = await browse(gw, range(20))
    events: list[Any] = [
        {"experiment": "checkout_test", "unit": "u1", "metric": "purchase"},
        {"experiment": "checkout_test", "unit": "u2", "metric": "order_value", "value": 30},
        {"experiment": "nope", "unit": "u1", "metric": "purchase"},
        {"experiment": "checkout_test", "unit": "u1", "metric": "refunds"},
        {"experiment": "checkout_test", "metric": "purchase"},
        {"experiment": "checkout_test", "unit": "u1", "metric": "order_value"},
        {"experiment": "checkout_test", "unit": "u1", "metric": "paid"},
        {"experiment": "checkout_test", "unit": "u1", "metric": "purchase", "extra": 1},
        "purchase",
        {"experiment": "checkout_test", "unit": "never-seen", "metric": "purchase"},
    ]
    async with client_session() as s:
        async with s.post(f"{gw.admin_url}/admin/events", json=events) as r:
            assert r.status == 400
            body = await r.json()
        assert body["accepted"] == 3
        errors = {e["index"]: e["error"] for e in body["errors"]}
        assert set(errors) == {2, 3, 4, 5, 6, 7, 8}
        assert "unknown experiment 'nope'" in errors[2]
        assert "has no metric 'refunds'" in errors[3]
        assert "'unit' must be" in errors[4]
        assert "needs one" in errors[5]
        assert "measured by the gateway" in errors[6]
        assert "unknown field(s) extra" in errors[7]
        assert "JSON object" in errors[8]
        retry = {"experiment": "checkout_test", "unit": "u3", "metric": "order_value",
                 "value": 5, "event_id": "order-77"}
        for _ in range(3):  # a client's retries of one event
            async with s.post(f"{gw.admin_url}/admin/events", json=retry) as r:
                assert r.status == 202 and (await r.json()) == {"accepted": 1}
        async with s.post(f"{gw.admin_url}/admin/events", data=b"{nope") as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["detail"]
        async with s.post(f"{gw.admin_url}/admin/events", json=[retry] * 1001) as r:
            assert r.status == 400 and "1 to 1000" in (await r.json())["detail"]

    async def counted() -> dict[str, Any] | None:
        found = await report(gw)
        purchase, value = found["metrics"][0], found["metrics"][1]
        done = sum(v["count"] for v in purchase["variants"].values()) == 1 and \
            sum(v["count"] for v in value["variants"].values()) == 35
        return found if done else None

    found = await until(counted)
    purchase, value = found["metrics"][0], found["metrics"][1]
    assert purchase["variants"][served["u1"]]["count"] == 1
    assert purchase["unexposed_events"] == 1  # never-seen: counted apart, not mixed in
    sums = {"control": 0.0, "treatment": 0.0}
    sums[served["u2"]] += 30
    sums[served["u3"]] += 5  # once, however often it was retried
    assert {v: level["count"] for v, level in value["variants"].items()} == sums


async def test_a_route_metric_counts_exposed_units_answered_with_its_status(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    async def pay(request: web.Request) -> web.Response:
        return web.Response(status=201 if request.headers.get("X-User-Id") != "u3" else 502)

    upstream.on("/pay", pay)
    gw = await gateway_factory(experiment_config(upstream))
    served = await browse(gw, range(10))
    async with client_session() as s:
        for user in ("u1", "u2", "u3", "stranger"):  # u3 fails; stranger was never exposed
            async with s.post(f"{gw.url}/pay", headers={"X-User-Id": user}) as r:
                await r.read()

    async def counted() -> dict[str, Any] | None:
        found = await report(gw)
        paid = found["metrics"][2]
        return found if sum(v["count"] for v in paid["variants"].values()) >= 2 else None

    found = await until(counted)
    paid = found["metrics"][2]
    expected = {"control": 0, "treatment": 0}
    for user in ("u1", "u2"):
        expected[served[user]] += 1
    assert {v: level["count"] for v, level in paid["variants"].items()} == expected
    assert paid["route"] == "pay"


async def test_status_changes_stop_recording_and_completion_freezes_the_report(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = await gateway_factory(experiment_config(upstream))
    await browse(gw, range(30))
    await until(lambda: _units_at_least(gw, 30))
    async with client_session() as s:
        async with s.patch(f"{gw.admin_url}/admin/experiments/checkout_test",
                           json={"status": "paused"}) as r:
            assert r.status == 200 and (await r.json())["lifecycle"] == "paused"
        await browse(gw, range(30, 60))
        async with s.post(f"{gw.admin_url}/admin/events", json={
                "experiment": "checkout_test", "unit": "u1", "metric": "purchase"}) as r:
            assert r.status == 400 and "is paused" in (await r.json())["errors"][0]["error"]
        await asyncio.sleep(0.6)
        assert sum((await report(gw))["units"].values()) == 30  # paused: nothing recorded
        async with s.patch(f"{gw.admin_url}/admin/experiments/checkout_test",
                           json={"status": "completed"}) as r:
            assert r.status == 200
            frozen = await r.json()
        assert frozen["lifecycle"] == "completed" and frozen["ended"] is not None
        async with s.patch(f"{gw.admin_url}/admin/experiments/checkout_test",
                           json={"status": "running"}) as r:
            assert r.status == 409 and "frozen" in (await r.json())["detail"]
        async with s.patch(f"{gw.admin_url}/admin/experiments/checkout_test",
                           json={"status": "finished"}) as r:
            assert r.status == 400
        async with s.get(f"{gw.admin_url}/admin/experiments") as r:
            listed = (await r.json())["experiments"]
    assert listed == [{"name": "checkout_test", "flag": "checkout", "lifecycle": "completed",
                       "status": frozen["status"], "units": frozen["units"]}]
    assert await report(gw) == frozen


async def _units_at_least(gw: InProcessGateway, n: int) -> bool:
    return sum((await report(gw))["units"].values()) >= n


async def test_a_guardrail_moving_against_its_goal_kills_the_flag(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    async def shop(request: web.Request) -> web.Response:
        broken = request.headers.get("X-Flag-Checkout") == "treatment"
        return web.json_response({"headers": list(request.headers.items())},
                                 status=503 if broken else 200)

    upstream.on("/shop", shop)
    gw = await gateway_factory(experiment_config(upstream, auto_stop=True))
    before = metrics.EXPERIMENT_GUARDRAIL_TRIPS.labels("checkout_test", "errors")._value.get()
    await browse(gw, range(120))

    async def tripped() -> dict[str, Any] | None:
        found = await report(gw)
        return found if found.get("stopped_by_guardrail") else None

    found = await until(tripped, timeout=15)
    assert found is not None, "the guardrail did not trip"
    assert found["status"] == "guardrail_tripped"
    assert "errors moved against its goal in variant treatment" in found["stopped_by_guardrail"]
    assert metrics.EXPERIMENT_GUARDRAIL_TRIPS.labels(
        "checkout_test", "errors")._value.get() == before + 1
    served = await browse(gw, range(120, 160))
    assert set(served.values()) == {"control"}  # killed: everybody gets the default
    async with client_session() as s:
        async with s.get(f"{gw.admin_url}/admin/flags/checkout") as r:
            assert (await r.json())["definition"]["kill_switch"] is True


async def test_the_cli_prints_the_report_as_a_table(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    import subprocess
    import sys

    from tests.harness import REPO

    gw = await gateway_factory(experiment_config(upstream))
    await browse(gw, range(40))
    found = await until(lambda: _units_at_least(gw, 40))
    assert found
    expected = await report(gw)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "experiment", "report", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=30)

    done = await asyncio.to_thread(run, "checkout_test", "--admin", gw.admin_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "checkout_test: flag checkout, control control, running"
    units = ", ".join(f"{v} {n}" for v, n in expected["units"].items())
    assert f"units: {units}" in done.stdout
    assert any(line.split()[:2] == ["control", str(expected["units"]["control"])]
               for line in lines)
    missing = await asyncio.to_thread(run, "nope", "--admin", gw.admin_url)
    assert missing.returncode == 1 and "404 for experiment 'nope'" in missing.stderr
    down = await asyncio.to_thread(run, "checkout_test", "--admin", "http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach the admin listener" in down.stderr
