"""OFREP on the admin listener, driven by OpenFeature's Python SDK and its OFREP provider.

The values a service reads over OFREP are the values its proxied requests carry in the flag
headers; flagd flag files answer there too, and follow their file. Shapes and status codes:
open-feature/protocol service/openapi.yaml.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import mmh3
import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.contrib.tools.flagd.core.targeting.custom_ops import (
    fractional as reference_v3_fractional,
)
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from tests.harness import (
    SPEC_DIR,
    GatewayProcessHandle,
    InProcessGateway,
    Upstream,
    client_session,
    require_admin_token,
)
from tests.integration.test_flag_gateway import flag_config, flags_seen

USERS = [f"user-{i}" for i in range(12)]


def ofrep_client(gw: InProcessGateway, name: str, token: str | None = None
                 ) -> OpenFeatureClient:
    headers = (lambda: {"Authorization": f"Bearer {token}"}) if token else None
    api.set_provider(OFREPProvider(gw.admin_url, headers_factory=headers, timeout=5),
                     domain=name)
    return api.get_client(domain=name)


def with_flagd_file(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The spec's flagd file as a flag source, and the attribute its targeting reads."""
    (tmp_path / "next").mkdir(exist_ok=True)
    shutil.copy(SPEC_DIR / "next" / "flags.flagd.json", tmp_path / "next" / "flags.flagd.json")
    config["flag_sources"] = [{"file": "next/flags.flagd.json"}]
    config["context"]["attributes"] = {"app_version": {"header": "X-App-Version"}}
    return config


async def test_openfeature_sdk_reads_the_values_the_flag_headers_carry(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))
    client = ofrep_client(gw, "same-values")
    async with client_session() as s:
        for i, user in enumerate(USERS):
            tenant = "acme" if i % 3 == 0 else "initech"
            seen = await flags_seen(s, gw.url, **{"X-User-Id": user, "X-Tenant-Id": tenant})
            ctx = EvaluationContext(targeting_key=user, attributes={"tenant_id": tenant})
            dash, button, beta = await asyncio.gather(
                asyncio.to_thread(client.get_boolean_details, "new_dashboard", False, ctx),
                asyncio.to_thread(client.get_string_details, "checkout_button", "?", ctx),
                asyncio.to_thread(client.get_boolean_details, "beta_reports", False, ctx))
            assert seen["x-flag-new-dashboard"] == [str(dash.value).lower()], user
            assert seen["x-flag-checkout-button"] == [button.value], user
            assert seen["x-flag-beta-reports"] == [str(beta.value).lower()], user
            assert button.reason == Reason.SPLIT and button.error_code is None
            assert beta.reason == (Reason.STATIC if tenant == "acme" else Reason.DEFAULT)
            assert beta.flag_metadata["gatewayReason"] == (
                "STATIC" if tenant == "acme" else "TARGETING_NOT_MATCHED")


async def test_flagd_v3_bucketing_agrees_with_a_newer_flagd_provider(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream,
                                                             flag_bucketing="flagd-v3"))
    client = ofrep_client(gw, "v3")
    async with client_session() as s:
        for user in USERS:
            seen = await flags_seen(s, gw.url, **{"X-User-Id": user})
            # What openfeature-flagd-core serves for the same 50/30/20 split by targetingKey.
            expected = reference_v3_fractional(
                {"targetingKey": user, "$flagd": {"flagKey": "checkout_button"}},
                ["blue", 50], ["green", 30], ["red", 20])
            assert seen["x-flag-checkout-button"] == [expected], user
            details = await asyncio.to_thread(client.get_string_details, "checkout_button",
                                              "?", EvaluationContext(targeting_key=user))
            assert details.value == expected


async def test_flagd_file_flags_are_served_with_fractional_and_sem_ver(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    gw: InProcessGateway = await gateway_factory(with_flagd_file(flag_config(upstream),
                                                                 tmp_path))
    client = ofrep_client(gw, "flagd-file")
    for user in USERS:
        ctx = EvaluationContext(targeting_key=user, attributes={"tenant_id": "acme"})
        details = await asyncio.to_thread(client.get_boolean_details, "new_search", False, ctx)
        # fractional [{"var": "user_id"}, ["on", 30], ["off", 70]]: flagd v2, by hand.
        expected = (mmh3.hash(user, 0, False) * 100) >> 32 < 30
        assert (details.value, details.reason) == (expected, Reason.TARGETING_MATCH), user
    other = EvaluationContext(targeting_key="u1", attributes={"tenant_id": "initech"})
    details = await asyncio.to_thread(client.get_boolean_details, "new_search", True, other)
    assert (details.value, details.variant) == (False, "off")
    for version, expected in (("3.1.0", "detailed"), ("2.9.9", "compact")):
        ctx = EvaluationContext(attributes={"app_version": version})
        text = await asyncio.to_thread(client.get_string_details, "price_display", "?", ctx)
        assert text.value == expected
        assert text.reason == (Reason.TARGETING_MATCH if expected == "detailed"
                               else Reason.DEFAULT)


async def test_errors_have_the_protocol_shapes_and_status_codes(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream))
    url = f"{gw.admin_url}/ofrep/v1/evaluate/flags"
    async with client_session() as s:
        async with s.post(f"{url}/no_such_flag", json={"context": {}}) as r:
            assert r.status == 404
            assert await r.json() == {"key": "no_such_flag", "errorCode": "FLAG_NOT_FOUND",
                                      "errorDetails": "no flag named 'no_such_flag'"}
        async with s.post(f"{url}/new_dashboard", data=b"{not json") as r:
            assert r.status == 400
            assert (await r.json())["errorCode"] == "PARSE_ERROR"
        async with s.post(f"{url}/new_dashboard", json={"context": {"user_id": 7}}) as r:
            assert r.status == 400
            body = await r.json()
            assert body["errorCode"] == "INVALID_CONTEXT" and "user_id" in body["errorDetails"]
        async with s.post(url, json={"context": []}) as r:
            assert r.status == 400
            assert (await r.json())["errorCode"] == "INVALID_CONTEXT"
    client = ofrep_client(gw, "errors")
    missing = await asyncio.to_thread(client.get_boolean_details, "no_such_flag", True)
    assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)


async def bulk(s: aiohttp.ClientSession, gw: InProcessGateway | GatewayProcessHandle,
               etag: str | None = None,
               context: dict[str, Any] | None = None) -> tuple[int, str, Any]:
    headers = {"If-None-Match": etag} if etag else {}
    async with s.post(f"{gw.admin_url}/ofrep/v1/evaluate/flags", headers=headers,
                      json={"context": context or {"targetingKey": "user-1"}}) as r:
        body = await r.json() if r.status == 200 else None
        return r.status, r.headers.get("ETag", ""), body


async def test_bulk_evaluation_answers_304_until_a_flag_changes(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    gw: InProcessGateway = await gateway_factory(with_flagd_file(flag_config(upstream),
                                                                 tmp_path))
    async with client_session() as s:
        status, etag, body = await bulk(s, gw)
        assert status == 200 and etag.startswith('"')
        keys = [flag["key"] for flag in body["flags"]]
        assert keys == ["new_dashboard", "checkout_button", "beta_reports", "maintenance_mode",
                        "new_search", "price_display"]
        assert (await bulk(s, gw, etag))[:2] == (304, etag)
        assert (await bulk(s, gw, f'W/{etag}, "other"'))[0] == 304  # RFC 9110 §13.1.2
        assert (await bulk(s, gw, etag, {"targetingKey": "user-2"}))[0] in (200, 304)
        async with s.put(f"{gw.admin_url}/admin/flags/maintenance_mode", json={
                "type": "operational", "default": True}) as r:
            assert r.status == 200
        status, changed, body = await bulk(s, gw, etag)
        assert status == 200 and changed != etag
        flags = {flag["key"]: flag for flag in body["flags"]}
        assert flags["maintenance_mode"]["metadata"]["source"] == "runtime"


async def test_a_flagd_file_flag_cannot_be_shadowed_at_run_time(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    gw: InProcessGateway = await gateway_factory(with_flagd_file(flag_config(upstream),
                                                                 tmp_path))
    async with client_session() as s:
        for method in ("PUT", "PATCH"):
            async with s.request(method, f"{gw.admin_url}/admin/flags/new_search",
                                 json={"type": "boolean", "default": True}) as r:
                assert r.status == 409
                assert "comes from a flagd file" in (await r.json())["detail"]
    gw.process.pipeline.runtime.flags.overrides.apply(  # as if stored by an older gateway
        "new_search", {"type": "boolean", "default": True})
    client = ofrep_client(gw, "shadow")
    details = await asyncio.to_thread(client.get_boolean_details, "new_search", True,
                                      EvaluationContext(attributes={"tenant_id": "initech"}))
    assert (details.value, details.flag_metadata["source"]) == (False, "flagd")


async def test_a_changed_flagd_file_is_served_without_a_restart(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    gw: InProcessGateway = await gateway_factory(with_flagd_file(flag_config(upstream),
                                                                 tmp_path))
    client = ofrep_client(gw, "watched")
    ctx = EvaluationContext(attributes={"app_version": "1.0.0"})
    before = await asyncio.to_thread(client.get_string_details, "price_display", "?", ctx)
    assert before.value == "compact"
    path = tmp_path / "next" / "flags.flagd.json"
    document = json.loads(path.read_text())
    document["flags"]["price_display"]["defaultVariant"] = "detailed"
    path.write_text(json.dumps(document))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = await asyncio.to_thread(client.get_string_details, "price_display", "?", ctx)
        if after.value == "detailed":
            break
        await asyncio.sleep(0.2)
    assert after.value == "detailed"


async def test_ofrep_needs_the_admin_token_when_one_is_configured(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = flag_config(upstream)
    require_admin_token(config, monkeypatch, token="s3cret")
    gw: InProcessGateway = await gateway_factory(config)
    async with client_session() as s:
        async with s.post(f"{gw.admin_url}/ofrep/v1/evaluate/flags/new_dashboard") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    denied = ofrep_client(gw, "no-token")
    refused = await asyncio.to_thread(denied.get_boolean_details, "maintenance_mode", False)
    assert refused.error_code == ErrorCode.GENERAL and refused.value is False
    allowed = ofrep_client(gw, "token", token="s3cret")
    served = await asyncio.to_thread(allowed.get_boolean_details, "maintenance_mode", False)
    assert (served.value, served.error_code) == (True, None)  # operational: on for everyone


async def test_ofrep_false_turns_the_endpoints_off(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw: InProcessGateway = await gateway_factory(flag_config(upstream, ofrep=False))
    async with client_session() as s:
        async with s.post(f"{gw.admin_url}/ofrep/v1/evaluate/flags/new_dashboard") as r:
            assert r.status == 404
            assert "ofrep: false" in (await r.json())["detail"]


async def test_with_workers_the_supervisor_forwards_ofrep_and_its_etag(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream) -> None:
    gw = process_factory(flag_config(upstream), workers=2)
    async with client_session() as s:
        status, etag, body = await bulk(s, gw)
        assert status == 200 and etag and len(body["flags"]) == 4
        assert (await bulk(s, gw, etag))[:2] == (304, etag)
        async with s.post(f"{gw.admin_url}/ofrep/v1/evaluate/flags/nope") as r:
            assert r.status == 404 and (await r.json())["errorCode"] == "FLAG_NOT_FOUND"


async def test_flagd_file_flags_reach_the_upstream_as_headers_with_the_ofrep_values(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    config = with_flagd_file(flag_config(upstream), tmp_path)
    config["routes"].insert(0, {"name": "search", "match": {"path_prefix": "/search/"},
                                "upstream": "api", "flags": ["new_search"]})
    gw: InProcessGateway = await gateway_factory(config)
    client = ofrep_client(gw, "flagd-headers")
    async with client_session() as s:
        for i, user in enumerate(USERS):
            tenant = "acme" if i % 2 else "initech"
            version = "3.1.0" if i % 3 else "2.0.0"
            sent = {"X-User-Id": user, "X-Tenant-Id": tenant, "X-App-Version": version}
            seen = await flags_seen(s, gw.url, **sent)  # flags: all, gateway's and flagd's
            ctx = EvaluationContext(targeting_key=user, attributes={
                "tenant_id": tenant, "app_version": version})
            search, price, dash = await asyncio.gather(
                asyncio.to_thread(client.get_boolean_details, "new_search", False, ctx),
                asyncio.to_thread(client.get_string_details, "price_display", "?", ctx),
                asyncio.to_thread(client.get_boolean_details, "new_dashboard", False, ctx))
            assert seen["x-flag-new-search"] == [str(search.value).lower()], user
            assert seen["x-flag-price-display"] == [price.value], user
            assert seen["x-flag-new-dashboard"] == [str(dash.value).lower()], user
            summary = seen["x-feature-flags"][0]
            assert f"new_search={'?1' if search.value else '?0'}" in summary
            assert f'price_display="{price.value}"' in summary and "new_dashboard=" in summary
            async with s.get(f"{gw.url}/search/x", headers=sent) as r:
                only = {k.lower(): v for k, v in (await r.json())["headers"]
                        if k.lower().startswith("x-flag-")}
            assert only == {"x-flag-new-search": str(search.value).lower()}, user
        async with s.get(f"{gw.admin_url}/metrics") as r:
            exposition = await r.text()
        assert 'gateway_flag_evaluations_total{flag="new_search"' in exposition
        # An edited file changes the headers without a restart, as it changes OFREP.
        path = tmp_path / "next" / "flags.flagd.json"
        document = json.loads(path.read_text())
        document["flags"]["price_display"]["defaultVariant"] = "detailed"
        path.write_text(json.dumps(document))
        deadline = time.monotonic() + 10
        old = {"X-User-Id": "u1", "X-App-Version": "1.0.0"}
        while time.monotonic() < deadline:
            seen = await flags_seen(s, gw.url, **old)
            if seen["x-flag-price-display"] == ["detailed"]:
                break
            await asyncio.sleep(0.2)
        assert seen["x-flag-price-display"] == ["detailed"]
