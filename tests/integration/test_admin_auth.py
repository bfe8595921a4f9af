"""Who may call the admin listener, through the real gateway (in process and under the
supervisor): with a token every /admin/* call needs it, reads included; probes and scrapes
stay open; with no token a non-loopback listener refuses /admin/*. Bearer answers follow
RFC 6750 §3 and RFC 9110 §15.5.2 (a 401 carries WWW-Authenticate)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import (
    GatewayProcessHandle,
    InProcessGateway,
    Upstream,
    base_config,
    client_session,
    require_admin_token,
)

READS = ("/admin/config", "/admin/flags", "/admin/ratelimits/per_user?key=u1")
OPEN = ("/healthz", "/readyz", "/metrics")


def limited(upstream: Upstream) -> dict[str, Any]:
    config = base_config(upstream.url)
    config["rate_limits"] = {"per_user": {"algorithm": "fixed_window", "scope": "user",
                                          "limit": 5, "window": "60s"}}
    config["routes"][0]["rate_limits"] = ["per_user"]
    return config


async def raw_status(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split(b" ", 2)[1])
    finally:
        writer.close()


async def test_with_a_token_every_admin_call_needs_it_reads_included(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = limited(upstream)
    auth = require_admin_token(config, monkeypatch)
    gw: InProcessGateway = await gateway_factory(config)
    async with client_session() as s:
        for path in (*READS, "/admin/no-such-endpoint"):
            async with s.get(f"{gw.admin_url}{path}") as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="gateway-admin"'
                assert r.content_type == "application/problem+json"
                assert "Bearer" in (await r.json(content_type=None))["detail"]
        for path in READS:
            async with s.get(f"{gw.admin_url}{path}", headers=auth) as r:
                assert r.status == 200, path
        async with s.get(f"{gw.admin_url}/admin/no-such-endpoint", headers=auth) as r:
            assert r.status == 404  # existence is revealed only to a caller with the token
        for path in OPEN:  # probes and scrapers carry no credentials
            async with s.get(f"{gw.admin_url}{path}") as r:
                assert r.status == 200, path


async def test_rfc6750_3_1_a_wrong_token_is_401_invalid_token(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = base_config(upstream.url)
    require_admin_token(config, monkeypatch, "right-token")
    gw: InProcessGateway = await gateway_factory(config)
    async with client_session() as s:
        for header in ("Bearer wrong-token", "Bearer right-token-and-more", "Bearer right"):
            async with s.get(f"{gw.admin_url}/admin/config",
                             headers={"Authorization": header}) as r:
                assert r.status == 401, header
                assert r.headers["WWW-Authenticate"] == \
                    'Bearer realm="gateway-admin", error="invalid_token"'
        for header in ("Basic cmlnaHQtdG9rZW4=", "right-token", "Bearer", "Bearer   "):
            async with s.get(f"{gw.admin_url}/admin/config",
                             headers={"Authorization": header}) as r:
                assert r.status == 401, header
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="gateway-admin"'
        async with s.get(f"{gw.admin_url}/admin/config",
                         headers={"Authorization": "bearer right-token"}) as r:
            assert r.status == 200  # RFC 9110 §11.1: the scheme is case-insensitive
    # Bytes no HTTP library sends: a token that is not valid UTF-8 is refused, not a crash.
    status = await raw_status(gw.config.admin.port,
                              b"GET /admin/config HTTP/1.1\r\nHost: a\r\n"
                              b"Authorization: Bearer \xff\xfe\x80\r\nConnection: close\r\n\r\n")
    assert status == 401


async def test_other_spellings_of_an_admin_path_never_pass_without_the_token(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = base_config(upstream.url)
    require_admin_token(config, monkeypatch)
    gw: InProcessGateway = await gateway_factory(config)
    for target in (b"/%61dmin/config", b"/admin/./config", b"/healthz/../admin/config",
                   b"//admin/config", b"/admin//config", b"/admin/config/", b"/admin%2Fconfig",
                   b"/admin/config?x=1", b"/admin/config#frag", b"/ADMIN/config"):
        status = await raw_status(gw.config.admin.port,
                                  b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n"
                                  b"Connection: close\r\n\r\n")
        assert status in (400, 401, 404), target


async def test_no_token_and_a_non_loopback_admin_address_refuse_admin_calls(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_UNSET_ADMIN_TOKEN", raising=False)
    config = limited(upstream)
    config["admin"]["host"] = "0.0.0.0"  # every interface: reachable from outside the pod
    config["admin"]["token_env"] = "GW_UNSET_ADMIN_TOKEN"
    gw = process_factory(config)  # `gateway run`, which warns at start
    assert "warning: admin.host: '0.0.0.0' is not a loopback address" in gw.logs()
    async with client_session() as s:
        for method, path in (("GET", "/admin/config"), ("POST", "/admin/reload"),
                             ("DELETE", "/admin/ratelimits/per_user?key=u1")):
            async with s.request(method, f"{gw.admin_url}{path}") as r:
                assert r.status == 403, path
                assert r.content_type == "application/problem+json"
                detail = (await r.json(content_type=None))["detail"]
                assert "GW_UNSET_ADMIN_TOKEN" in detail and "loopback" in detail
        for path in OPEN:
            async with s.get(f"{gw.admin_url}{path}") as r:
                assert r.status == 200, path


async def test_under_the_supervisor_every_admin_call_needs_the_token(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream) -> None:
    """Workers are reached over unix sockets: the rule must hold there as well."""
    config = limited(upstream)
    config["admin"]["token_env"] = "GW_SUPERVISED_TOKEN"
    gw = process_factory(config, workers=2, env={"GW_SUPERVISED_TOKEN": "sup3r"})
    auth = {"Authorization": "Bearer sup3r"}
    async with client_session() as s:
        for path in READS:
            async with s.get(f"{gw.admin_url}{path}") as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with s.get(f"{gw.admin_url}{path}", headers=auth) as r:
                assert r.status == 200, path
        async with s.delete(f"{gw.admin_url}/admin/ratelimits/per_user?key=u1") as r:
            assert r.status == 401
        for path in OPEN:
            async with s.get(f"{gw.admin_url}{path}") as r:
                assert r.status == 200, path
