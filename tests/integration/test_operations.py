"""Operating the gateway: admin config and reload, hot reload, metrics over workers, logs."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.harness import (
    GatewayProcessHandle,
    InProcessGateway,
    Upstream,
    base_config,
    client_session,
    free_port,
    gather_limited,
    require_admin_token,
    write_config,
)


def cached_and_limited(upstream: Upstream, rules: dict[str, Any]) -> dict[str, Any]:
    """A cacheable page on /c/ (route `cached`) and every other path under `rules`
    (route `limited`)."""
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="cached", headers={"Cache-Control": "max-age=600"})

    upstream.on("/c/page", page)
    config = base_config(upstream.url, rate_limits=rules)
    config["routes"] = [
        {"name": "cached", "match": {"path_prefix": "/c/"}, "upstream": "api",
         "cache": {"ttl": "10m"}},
        {"name": "limited", "match": {"path_prefix": "/"}, "upstream": "api",
         "rate_limits": list(rules)},
    ]
    return config


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_admin_config_redacts_secrets(gateway_factory: Callable[..., object],
                                            upstream: Upstream,
                                            redis_server: object) -> None:
    config = base_config(upstream.url)
    config["redis"] = {"url": "redis://app:s3cret-pass@127.0.0.1:1/0"}
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    async with client_session() as s, s.get(f"{gw.admin_url}/admin/config") as r:
        assert r.status == 200
        text = await r.text()
    assert "s3cret-pass" not in text
    document = orjson.loads(text)
    assert document["redis"]["url"] == "redis://app:***@127.0.0.1:1/0"
    assert document["routes"][0]["name"] == "default"
    assert document["upstreams"]["api"]["url"] == upstream.url


async def test_reload_applies_a_valid_file_and_keeps_the_old_on_errors(
        gateway_factory: Callable[..., object], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    config["routes"] = [{"name": "only-v2", "match": {"path_prefix": "/v2/"}, "upstream": "api"}]
    gw.config_path.write_text(yaml.safe_dump(config))
    async with client_session() as s:
        async with s.post(f"{gw.admin_url}/admin/reload") as r:
            assert r.status == 200, await r.text()
            assert "1 routes" in (await r.json())["summary"]
        async with s.get(f"{gw.url}/v1/x") as r:
            assert r.status == 404
        gw.config_path.write_text("routes: [{name: x, match: {path_prefix: /}, upstream: nope}]\n")
        async with s.post(f"{gw.admin_url}/admin/reload") as r:
            assert r.status == 400
            body = await r.json()
            assert any("unknown upstream 'nope'" in e for e in body["errors"])
        async with s.get(f"{gw.url}/v2/x") as r:
            assert r.status == 200  # the previous config still serves


async def test_mutating_admin_calls_need_the_token(gateway_factory: Callable[..., object],
                                                   upstream: Upstream,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = base_config(upstream.url)
    auth = require_admin_token(config, monkeypatch, "tok-123")
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    async with client_session() as s:
        async with s.post(f"{gw.admin_url}/admin/reload") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with s.post(f"{gw.admin_url}/admin/reload",
                          headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with s.post(f"{gw.admin_url}/admin/reload", headers=auth) as r:
            assert r.status == 200
        async with s.get(f"{gw.admin_url}/admin/config") as r:
            assert r.status == 401  # reading needs the token too


async def test_sighup_and_file_change_reload(process_factory: Callable[..., GatewayProcessHandle],
                                             upstream: Upstream) -> None:
    config = base_config(upstream.url)
    gw = process_factory(config, workers=2)
    async with client_session() as s:
        async with s.get(f"{gw.url}/a/x") as r:
            assert r.status == 200
        config["routes"] = [{"name": "b", "match": {"path_prefix": "/b/"}, "upstream": "api"}]
        gw.config_path.write_text(yaml.safe_dump(config))  # the watcher picks this up
        for _ in range(60):
            async with s.get(f"{gw.url}/a/x") as r:
                if r.status == 404:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the file change was not applied")
        config["routes"] = [{"name": "c", "match": {"path_prefix": "/c/"}, "upstream": "api"}]
        gw.config_path.write_text(yaml.safe_dump(config))
        gw.signal(signal.SIGHUP)
        for _ in range(60):
            statuses = set()
            for _ in range(6):  # both workers must have it
                async with s.get(f"{gw.url}/c/x") as r:
                    statuses.add(r.status)
            if statuses == {200}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("SIGHUP did not reload every worker")


async def test_steady_traffic_through_twenty_reloads_loses_nothing(
        gateway_factory: Callable[..., object], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic(s: object) -> None:
        while not stop.is_set():
            async with s.get(f"{gw.url}/x") as r:  # type: ignore[attr-defined]
                await r.read()
                statuses.append(r.status)

    async with client_session() as s:
        workers = [asyncio.ensure_future(traffic(s)) for _ in range(8)]
        for i in range(20):
            config["upstreams"]["api"]["timeout"] = f"{10 + i}s"  # a real change each time
            gw.config_path.write_text(yaml.safe_dump(config))
            async with s.post(f"{gw.admin_url}/admin/reload") as r:
                assert r.status == 200
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*workers)
    assert len(statuses) > 100
    assert set(statuses) == {200}


async def test_metrics_sum_over_workers(process_factory: Callable[..., GatewayProcessHandle],
                                        upstream: Upstream) -> None:
    gw = process_factory(base_config(upstream.url), workers=2)
    async with client_session() as s:
        async def one(i: int) -> int:
            async with s.get(f"{gw.url}/m/{i}") as r:
                await r.read()
                return r.status

        statuses = await gather_limited([one(i) for i in range(1000)], limit=100)
        from collections import Counter
        assert statuses.count(200) == 1000, Counter(statuses)
        async with s.get(f"{gw.admin_url}/metrics") as r:
            text = await r.text()
    assert metric_sum(text, "gateway_requests_total", route="default", method="GET",
                      status="200") == 1000
    assert metric_sum(text, "gateway_request_duration_seconds_count", route="default") == 1000
    assert "gateway_inflight_requests" in text
    # Both workers served some of them (SO_REUSEPORT spreads connections).
    assert upstream.count() == 1000


async def test_an_apply_only_ask_applies_the_figures_and_renders_nothing(
        gateway: InProcessGateway) -> None:
    """What the supervisor sends each worker before a scrape: the worker's held request
    figures reach the registry, and the answer is empty (the supervisor renders itself)."""
    from prometheus_client import REGISTRY

    from gateway.admin import APPLY_ONLY
    from gateway.metrictally import TALLY

    def served() -> float:
        return REGISTRY.get_sample_value("gateway_requests_total", {
            "route": "default", "method": "GET", "status": "200"}) or 0.0

    async with client_session() as s:
        TALLY.apply_all()
        before = served()
        async with s.get(f"{gateway.url}/m/1") as r:
            assert r.status == 200
        async with s.get(f"{gateway.admin_url}/metrics", headers={APPLY_ONLY: "1"}) as r:
            assert r.status == 204 and await r.read() == b""
        assert served() == before + 1
        async with s.get(f"{gateway.admin_url}/metrics") as r:  # a plain scrape renders
            assert r.status == 200 and "gateway_requests_total" in await r.text()


async def test_access_log_lines(process_factory: Callable[..., GatewayProcessHandle],
                                upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["logging"] = {"level": "warning", "access_log": True}
    gw = process_factory(config)
    async with client_session() as s:
        async with s.get(f"{gw.url}/logged?q=1", headers={
            "X-Api-Key": "very-secret-key", "Cookie": "session=abc", "X-Request-Id": "req-42",
        }) as r:
            assert r.status == 200
    await asyncio.sleep(0.3)
    lines = [orjson.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    record = next(line for line in lines if line["request_id"] == "req-42")
    assert record["route"] == "default" and record["method"] == "GET"
    assert record["path"] == "/logged" and record["status"] == 200
    assert record["client_ip"] == "127.0.0.1" and record["upstream"] == "api"
    assert record["duration"] > 0 and record["upstream_duration"] > 0
    assert record["bytes"] > 0 and "time" in record
    assert "very-secret-key" not in gw.logs() and "session=abc" not in gw.logs()


def test_readyz_follows_redis_with_failure_mode_closed(
        process_factory: Callable[..., GatewayProcessHandle], redis_server: object,
        tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from tests.harness import RedisServer

    assert isinstance(redis_server, RedisServer)
    config = base_config("http://127.0.0.1:9")
    # A second for the first PING of a healthy Redis; a killed one refuses at once.
    config["redis"] = {"url": redis_server.url, "failure_mode": "closed", "timeout": "1s"}
    gw = process_factory(config)

    def status() -> int:
        try:
            with urllib.request.urlopen(f"{gw.admin_url}/readyz", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert status() == 200
    redis_server.kill()
    assert status() == 503
    redis_server.start()
    import time

    deadline = time.monotonic() + 10
    while status() != 200:
        assert time.monotonic() < deadline, "readiness did not recover with Redis"
        time.sleep(0.2)


async def test_admin_unknown_path_and_method_are_problems(gateway: InProcessGateway) -> None:
    async with client_session() as s:
        async with s.get(f"{gateway.admin_url}/admin/nothing") as r:
            assert r.status == 404
            assert r.headers["Content-Type"] == "application/problem+json"
            assert "/admin/nothing" in (await r.json(content_type=None))["detail"]
        async with s.delete(f"{gateway.admin_url}/admin/reload") as r:
            assert r.status == 405 and "POST" in r.headers["Allow"]


async def test_limits_and_cache_survive_a_reload(gateway_factory: Callable[..., object],
                                                 upstream: Upstream) -> None:
    config = cached_and_limited(upstream, {"per_user": {
        "algorithm": "fixed_window", "scope": "user", "limit": 3, "window": "1h"}})
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    user = {"X-User-Id": "u1"}
    async with client_session() as s:
        for _ in range(2):
            async with s.get(f"{gw.url}/x", headers=user) as r:
                assert r.status == 200
        async with s.get(f"{gw.url}/c/page") as r:
            assert r.headers["X-Cache"] == "MISS"
        config["upstreams"]["api"]["timeout"] = "20s"
        config["drain_timeout"] = "4s"
        gw.config_path.write_text(yaml.safe_dump(config))
        async with s.post(f"{gw.admin_url}/admin/reload") as r:
            assert r.status == 200
        async with s.get(f"{gw.url}/c/page") as r:
            assert r.headers["X-Cache"] == "HIT"
        async with s.get(f"{gw.url}/x", headers=user) as r:
            assert r.status == 200  # the third of three
        async with s.get(f"{gw.url}/x", headers=user) as r:
            assert r.status == 429  # the count from before the reload was kept
    assert upstream.count("/c/page") == 1


async def test_metrics_families_and_labels(gateway_factory: Callable[..., object],
                                           upstream: Upstream) -> None:
    config = cached_and_limited(upstream, {"tight": {
        "algorithm": "token_bucket", "scope": "user", "limit": 1, "window": "1h"}})
    config["flags"] = {"beta": {"type": "boolean", "default": False}}
    config["routes"][1]["flags"] = "all"
    gw: InProcessGateway = await gateway_factory(config)  # type: ignore[misc]
    async with client_session() as s:
        for _ in range(2):
            async with s.get(f"{gw.url}/c/page") as r:
                await r.read()
        for _ in range(2):
            async with s.get(f"{gw.url}/x", headers={"X-User-Id": "m1"}) as r:
                await r.read()
        async with s.get(f"{gw.admin_url}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    assert metric_sum(text, "gateway_requests_total", route="limited", status="429") >= 1
    assert metric_sum(text, "gateway_upstream_duration_seconds_count", route="cached",
                      upstream="api") >= 1
    assert metric_sum(text, "gateway_ratelimit_decisions_total", rule="tight",
                      outcome="allowed") >= 1
    assert metric_sum(text, "gateway_ratelimit_decisions_total", rule="tight",
                      outcome="limited") >= 1
    assert metric_sum(text, "gateway_cache_lookups_total", route="cached", result="hit") >= 1
    assert metric_sum(text, "gateway_flag_evaluations_total", flag="beta") >= 1
    for family in ("gateway_redis_errors_total", "gateway_inflight_requests",
                   "gateway_request_duration_seconds_bucket"):
        assert family in text, family
    # Buckets from half a millisecond to 30 s.
    assert 'le="0.0005"' in text and 'le="30.0"' in text
    # Label values come from the config, never from paths or user ids.
    assert "/c/page" not in text and "m1" not in text


async def test_container_health_check_follows_the_configured_admin_port(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    """`python -m gateway.healthcheck` (the Dockerfile's HEALTHCHECK) against a gateway whose
    admin listener is not on 9901: healthy; and unhealthy, with the reason, for a config
    whose admin port nobody listens on."""
    config = base_config(upstream.url)
    gw = await gateway_factory(config)
    assert config["admin"]["port"] != 9901

    async def check(path: Path) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.healthcheck", "--config", str(path),
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        return proc.returncode or 0, err.decode()

    assert await check(gw.config_path) == (0, "")
    config["admin"]["port"] = free_port()
    code, err = await check(write_config(tmp_path, config, "elsewhere.yaml"))
    assert code == 1 and "unhealthy" in err and f":{config['admin']['port']}/healthz" in err
