"""Flags through the real gateway: injection, stripping, stickiness across workers,
runtime changes through the admin API, shared over a real redis-server, and their refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import mmh3
import orjson
import pytest
from aiohttp import web

from gateway.flags.evaluate import thresholds
from tests.harness import InProcessGateway, RedisServer, Upstream, base_config, client_session
from tests.rediscluster import RedisBackend, single_backend

FLAGS: dict[str, Any] = {
    "new_dashboard": {"type": "boolean", "default": False, "rollout": 50},
    "checkout_button": {"type": "multivariate", "default": "blue", "variants": [
        {"name": "control", "value": "blue", "weight": 50},
        {"name": "green", "value": "green", "weight": 30},
        {"name": "red", "value": "red", "weight": 20}]},
    "beta_reports": {"default": False, "targeting": [
        {"attribute": "tenant_id", "operator": "in", "values": ["acme", "globex"]}]},
    "maintenance_mode": {"type": "operational", "default": False, "kill_switch": False},
}


def flag_config(upstream: Upstream, **overrides: Any) -> dict[str, Any]:
    config = base_config(upstream.url, flags=FLAGS, **overrides)
    config["routes"] = [
        {"name": "plain", "match": {"path_prefix": "/plain/"}, "upstream": "api"},
        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api", "flags": "all"},
    ]
    return config


def received(payload: bytes) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in orjson.loads(payload)["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


async def flags_seen(session: aiohttp.ClientSession, url: str, **headers: str
                     ) -> dict[str, list[str]]:
    async with session.get(f"{url}/echo", headers=headers) as response:
        assert response.status == 200
        seen = received(await response.read())
    return {k: v for k, v in seen.items() if k.startswith("x-flag-") or k == "x-feature-flags"}


def in_rollout(key: str, user: str, percent: int) -> bool:
    """What flagd fractional v2 decides for a boolean rollout, computed independently."""
    return (mmh3.hash(key + user, 0, signed=False) * 100) >> 32 < percent


# ---------------------------------------------------------------- injection

async def test_flags_are_injected_and_client_sent_flag_headers_removed(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))
    forged = {"X-Flag-Maintenance-Mode": "true", "x-flag-invented": "1",
              "X-Feature-Flags": "maintenance_mode=?1", "X-Tenant-Id": "acme",
              "X-User-Id": "user-1"}
    async with client_session() as s:
        seen = await flags_seen(s, gw.url, **forged)
        plain = await flags_seen(s, gw.url.replace("/echo", "") + "/plain", **forged)
    expected_dash = "true" if in_rollout("new_dashboard", "user-1", 50) else "false"
    assert seen["x-flag-maintenance-mode"] == ["true"]  # the gateway's value: on for everyone
    assert "x-flag-invented" not in seen
    assert seen["x-flag-beta-reports"] == ["true"]
    assert seen["x-flag-new-dashboard"] == [expected_dash]
    assert len(seen["x-feature-flags"]) == 1
    assert "beta_reports=?1" in seen["x-feature-flags"][0]
    assert "maintenance_mode=?1" in seen["x-feature-flags"][0]
    # A route without flags forwards none, and none of the client's either.
    assert plain == {}


async def test_a_cached_route_varies_on_a_flag_header_and_revalidates_with_it(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    """The flag headers a cached route sends are what its stored variants are keyed on
    (RFC 9111 §4.1, Vary), on a miss and on a revalidation alike."""
    seen: list[tuple[str | None, str | None]] = []

    async def by_flag(request: web.Request) -> web.Response:
        flag = request.headers.get("X-Flag-Beta-Reports")
        seen.append((flag, request.headers.get("If-None-Match")))
        etag = f'"{flag}"'
        headers = {"Cache-Control": "max-age=0, must-revalidate", "ETag": etag,
                   "Vary": "X-Flag-Beta-Reports"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(text=f"beta={flag}", headers=headers)

    upstream.on("/cached/report", by_flag)
    config = flag_config(upstream)
    config["cache"] = {"memory_max": "1MiB"}
    config["routes"].insert(0, {"name": "cached", "match": {"path_prefix": "/cached/"},
                                "upstream": "api", "flags": ["beta_reports"],
                                "cache": {"ttl": "30s"}})
    gw: InProcessGateway = await gateway_factory(config)
    async with client_session() as s:
        for tenant, beta in (("acme", "true"), ("other", "false"),
                             ("acme", "true"), ("other", "false")):
            async with s.get(f"{gw.url}/cached/report", headers={"X-Tenant-Id": tenant}) as r:
                assert (r.status, await r.text()) == (200, f"beta={beta}")
    # Two misses, one per variant; then each variant revalidated with its own flag value.
    assert seen == [("true", None), ("false", None), ("true", '"true"'),
                    ("false", '"false"')]


async def test_flags_are_sticky_across_two_worker_processes(
        process_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = process_factory(flag_config(upstream), workers=2)
    users = [f"sticky-{i}" for i in range(40)]
    answers: dict[str, set[str]] = {u: set() for u in users}
    # A fresh connection per request, so SO_REUSEPORT spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(4):
            for user in users:
                seen = await flags_seen(s, gw.url, **{"X-User-Id": user})
                answers[user].add(seen["x-flag-new-dashboard"][0]
                                  + seen["x-flag-checkout-button"][0])
    cuts = thresholds([50, 30, 20])
    for user in users:
        assert len(answers[user]) == 1, (user, answers[user])
        dash = "true" if in_rollout("new_dashboard", user, 50) else "false"
        h = mmh3.hash("checkout_button" + user, 0, signed=False)
        colour = ["blue", "green", "red"][sum(h >= c for c in cuts)]
        assert answers[user] == {dash + colour}
    assert {a.pop()[:4] for a in answers.values()} == {"true", "fals"}


# ---------------------------------------------------------------- admin API, no Redis

async def admin(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
                raw: bytes | None = None, token: str | None = None
                ) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    async with session.request(method, url, data=data, headers=headers) as response:
        return response.status, orjson.loads(await response.read() or b"{}")


async def test_admin_reads_evaluates_changes_and_deletes(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))
    flags = f"{gw.admin_url}/admin/flags"
    async with client_session() as s:
        status, listing = await admin(s, "GET", flags)
        assert status == 200 and set(listing["flags"]) == set(FLAGS)
        assert listing["flags"]["new_dashboard"]["definition"]["rollout"] == 50

        context = orjson.dumps({"tenant_id": "acme", "user_id": "u1"}).decode()
        async with s.get(f"{flags}/beta_reports", params={"context": context}) as r:
            assert await r.json() == {"key": "beta_reports", "value": True,
                                      "variant": "true", "reason": "STATIC"}

        status, body = await admin(s, "PATCH", f"{flags}/maintenance_mode",
                                   {"kill_switch": True})
        assert status == 200 and body["source"] == "runtime" and body["overrides_config"]
        seen = await flags_seen(s, gw.url)
        assert seen["x-flag-maintenance-mode"] == ["false"]

        # PUT creates a flag; `flags: all` routes serve it at once.
        status, _ = await admin(s, "PUT", f"{flags}/dark_mode",
                                {"type": "boolean", "default": False, "rollout": 100})
        assert status == 200
        assert (await flags_seen(s, gw.url, **{"X-User-Id": "u"}))["x-flag-dark-mode"] == [
            "true"]

        # DELETE drops the runtime change: the file's definition applies again.
        status, body = await admin(s, "DELETE", f"{flags}/maintenance_mode")
        assert status == 200 and body["source"] == "config"
        assert (await flags_seen(s, gw.url))["x-flag-maintenance-mode"] == ["true"]
        status, body = await admin(s, "DELETE", f"{flags}/maintenance_mode")
        assert status == 404 and "no runtime change" in body["detail"]


@pytest.mark.parametrize(("method", "key", "payload", "status", "detail"), [
    ("PUT", "x", b"{not json", 400, "the body is not valid JSON"),
    ("PUT", "x", b"[1, 2]", 400, "a flag definition must be a JSON object"),
    ("PATCH", "new_dashboard", b'{"rolout": 10}', 400,
     "flags.new_dashboard.rolout: unknown key 'rolout' (did you mean 'rollout'?)"),
    ("PATCH", "new_dashboard", b'{"rollout": "ten"}', 400,
     "flags.new_dashboard.rollout: expected a number, got str 'ten'"),
    ("PATCH", "new_dashboard", b'{"rollout": 150}', 400, "must be at most 100"),
    ("PATCH", "new_dashboard", b'{"kill_switch": "yes"}', 400, "expected true or false"),
    ("PATCH", "checkout_button", b'{"default": "purple"}', 400,
     "'purple' is not the value of any variant"),
    ("PUT", "loop", b'{"prerequisites": ["loop"]}', 400, "prerequisite cycle: loop -> loop"),
    ("PUT", "y", b'{"prerequisites": ["nope"]}', 400, "unknown flag 'nope'"),
    ("PATCH", "missing", b'{"rollout": 1}', 404, "no flag named 'missing'"),
])
async def test_bad_admin_input_is_refused_with_a_specific_message_and_changes_nothing(
        gateway_factory: Callable[..., Any], upstream: Upstream, method: str, key: str,
        payload: bytes, status: int, detail: str) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))
    async with client_session() as s:
        got, body = await admin(s, method, f"{gw.admin_url}/admin/flags/{key}", raw=payload)
        assert got == status and detail in body["detail"], body
        _, listing = await admin(s, "GET", f"{gw.admin_url}/admin/flags")
    assert set(listing["flags"]) == set(FLAGS)
    assert listing["flags"]["new_dashboard"]["source"] == "config"


async def test_bad_evaluation_context_is_refused(gateway_factory: Callable[..., Any],
                                                 upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))
    url = f"{gw.admin_url}/admin/flags/beta_reports"
    async with client_session() as s:
        for context, detail in (("{bad", "context is not valid JSON"),
                                ('{"planet": "x"}', "context has no field 'planet'"),
                                ('{"user_id": 5}', "context.user_id must be a string")):
            async with s.get(url, params={"context": context}) as r:
                assert r.status == 400 and detail in (await r.json())["detail"]


async def test_admin_token(gateway_factory: Callable[..., Any], upstream: Upstream,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGS_TEST_TOKEN", "s3cret")
    config = flag_config(upstream)
    config["admin"]["token_env"] = "FLAGS_TEST_TOKEN"
    gw: InProcessGateway = await gateway_factory(config)
    url = f"{gw.admin_url}/admin/flags/maintenance_mode"
    async with client_session() as s:
        status, body = await admin(s, "PATCH", url, {"kill_switch": True})
        assert status == 401 and "Bearer" in body["detail"]
        status, body = await admin(s, "PATCH", url, {"kill_switch": True}, token="wrong")
        assert status == 401 and "not valid" in body["detail"]
        status, _ = await admin(s, "GET", url)  # flag definitions are not public
        assert status == 401
        status, _ = await admin(s, "GET", url, token="s3cret")
        assert status == 200
        status, _ = await admin(s, "PATCH", url, {"kill_switch": True}, token="s3cret")
        assert status == 200


async def test_no_token_on_a_loopback_admin_listener_allows_changes(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))  # admin on 127.0.0.1
    async with client_session() as s:
        status, _ = await admin(s, "PATCH", f"{gw.admin_url}/admin/flags/new_dashboard",
                                {"rollout": 10})
    assert status == 200


# ---------------------------------------------------------------- shared through Redis

def redis_config(upstream: Upstream, redis: RedisServer | RedisBackend,
                 timeout: str = "1s") -> dict[str, Any]:
    """`timeout`: a second, so that a change lands however busy the machine (a fresh
    gateway's first call opens a connection and loads the script); the test of a Redis
    gone asks for a short one."""
    backend = redis if isinstance(redis, RedisBackend) else single_backend(redis)
    return flag_config(upstream, redis=backend.config(timeout=timeout, key_prefix="flagtest:"))


def stored(backend: RedisBackend, *command: str) -> Any:
    with backend.client() as client:
        return client.execute_command(*command)


async def two_gateways(gateway_factory: Callable[..., Any], upstream: Upstream,
                       redis: RedisServer | RedisBackend
                       ) -> tuple[InProcessGateway, InProcessGateway]:
    """Two gateways (each its own Services and subscriber) sharing one Redis."""
    return (await gateway_factory(redis_config(upstream, redis), name="first.yaml"),
            await gateway_factory(redis_config(upstream, redis), name="second.yaml"))


async def wait_for_header(session: aiohttp.ClientSession, url: str, name: str, value: str,
                          within: float) -> float:
    started = time.monotonic()
    while True:
        seen = await flags_seen(session, url)
        if seen.get(name) == [value]:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"{name} still {seen.get(name)} after {within}s")
        await asyncio.sleep(0.02)


async def test_kill_switch_flipped_on_one_gateway_reaches_another_within_a_second(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_backend: RedisBackend) -> None:
    first, second = await two_gateways(gateway_factory, upstream, redis_backend)
    async with client_session() as s:
        assert (await flags_seen(s, second.url))["x-flag-maintenance-mode"] == ["true"]
        status, _ = await admin(s, "PATCH", f"{first.admin_url}/admin/flags/maintenance_mode",
                                {"kill_switch": True})
        assert status == 200
        await wait_for_header(s, second.url, "x-flag-maintenance-mode", "false", within=1.0)
    kept = stored(redis_backend, "HGET", "flagtest:flags:overrides", "maintenance_mode")
    assert orjson.loads(kept)["kill_switch"] is True


async def test_runtime_changes_survive_a_restart_and_reach_later_gateways(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_backend: RedisBackend) -> None:
    first: InProcessGateway = await gateway_factory(redis_config(upstream, redis_backend),
                                                    name="first.yaml")
    async with client_session() as s:
        status, _ = await admin(s, "PUT", f"{first.admin_url}/admin/flags/dark_mode",
                                {"default": False, "rollout": 100})
        assert status == 200
        await first.stop()
        later: InProcessGateway = await gateway_factory(redis_config(upstream, redis_backend),
                                                        name="later.yaml")
        # The very first request of a gateway started afterwards already sees it.
        seen = await flags_seen(s, later.url, **{"X-User-Id": "u"})
        assert seen["x-flag-dark-mode"] == ["true"]
        # And DELETE there removes it for everyone, stored state included.
        status, _ = await admin(s, "DELETE", f"{later.admin_url}/admin/flags/dark_mode")
        assert status == 200
    assert not stored(redis_backend, "HEXISTS", "flagtest:flags:overrides", "dark_mode")


async def test_redis_down_refuses_the_change_with_503_and_applies_nothing(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_server: RedisServer) -> None:
    gw: InProcessGateway = await gateway_factory(redis_config(upstream, redis_server,
                                                              timeout="250ms"))
    redis_server.kill()
    async with client_session() as s:
        status, body = await admin(s, "PATCH", f"{gw.admin_url}/admin/flags/maintenance_mode",
                                   {"kill_switch": True})
        assert status == 503 and "Redis" in body["detail"]
        assert (await flags_seen(s, gw.url))["x-flag-maintenance-mode"] == ["true"]
        _, shown = await admin(s, "GET", f"{gw.admin_url}/admin/flags/maintenance_mode")
        assert shown["source"] == "config"


async def test_subscriber_reconnects_after_redis_restarts(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        redis_server: RedisServer) -> None:
    first, second = await two_gateways(gateway_factory, upstream, redis_server)
    redis_server.restart()
    async with client_session() as s:
        deadline = time.monotonic() + 10
        while True:  # the breaker of `first` may still be open for a moment
            status, _ = await admin(s, "PATCH",
                                    f"{first.admin_url}/admin/flags/maintenance_mode",
                                    {"kill_switch": True})
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status == 200
        await wait_for_header(s, second.url, "x-flag-maintenance-mode", "false", within=5.0)


async def every_worker_shows(url: str, name: str, value: str, within: float) -> None:
    """Fresh connections (spread over the workers) until 30 answers in a row show `value`."""
    deadline = time.monotonic() + within
    in_a_row = 0
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        while in_a_row < 30:
            seen = await flags_seen(s, url)
            in_a_row = in_a_row + 1 if seen.get(name) == [value] else 0
            assert time.monotonic() < deadline, f"{name} is {seen.get(name)} on some worker"


async def test_a_change_reaches_every_worker_of_another_gateway_through_redis(
        gateway_factory: Callable[..., Any], process_factory: Callable[..., Any],
        upstream: Upstream, redis_backend: RedisBackend) -> None:
    workers = process_factory(redis_config(upstream, redis_backend), workers=2,
                              name="workers.yaml")
    first: InProcessGateway = await gateway_factory(redis_config(upstream, redis_backend))
    await every_worker_shows(workers.url, "x-flag-maintenance-mode", "true", within=5)
    async with client_session() as s:
        status, _ = await admin(s, "PATCH", f"{first.admin_url}/admin/flags/maintenance_mode",
                                {"kill_switch": True})
    assert status == 200
    await every_worker_shows(workers.url, "x-flag-maintenance-mode", "false", within=2)


async def test_without_redis_a_change_reaches_every_worker_of_the_gateway(
        process_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw = process_factory(flag_config(upstream), workers=2)
    async with client_session() as s:
        status, _ = await admin(s, "PATCH", f"{gw.admin_url}/admin/flags/maintenance_mode",
                                {"kill_switch": True})
    assert status == 200
    await every_worker_shows(gw.url, "x-flag-maintenance-mode", "false", within=2)


async def test_flag_headers_travel_with_request_bodies_of_either_framing(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    """The serialized flag fields go after the header section: a sized body and a chunked
    (streamed, unknown length) one still arrive whole, with the flags beside them."""
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))

    async def chunks() -> Any:
        for _ in range(4):
            yield b"x" * 1000

    async with client_session() as s:
        for body in (b"y" * 3000, chunks()):
            async with s.post(f"{gw.url}/echo", data=body,
                              headers={"X-Tenant-Id": "acme"}) as r:
                assert r.status == 200
                echoed = orjson.loads(await r.read())
            seen = received(orjson.dumps(echoed))
            assert echoed["body_bytes"] in (3000, 4000)
            assert seen["x-flag-beta-reports"] == ["true"]
            assert "beta_reports=?1" in seen["x-feature-flags"][0]
    assert upstream.bodies == [b"y" * 3000, b"x" * 4000]
