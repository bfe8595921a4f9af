"""Header fields and query parameters that would mean something else downstream, through the
real gateway: underscored names, repeated identity fields, `ignore_query` parameters, and
the gateway's own `Server` field."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.harness import (
    GatewayProcessHandle,
    InProcessGateway,
    Upstream,
    base_config,
    client_session,
)

Factory = Callable[..., Awaitable[InProcessGateway]]


async def echoed(url: str, headers: list[tuple[str, str]]) -> CIMultiDict[str]:
    """The header section the upstream received (the harness upstream echoes it)."""
    async with client_session() as s, s.get(url, headers=CIMultiDict(headers)) as r:
        assert r.status == 200
        return CIMultiDict((k, v) for k, v in (await r.json())["headers"])


def untrusted(upstream_url: str, **listen: Any) -> dict[str, Any]:
    """The base config, flags on, with the test client (127.0.0.1) not a trusted proxy."""
    config = base_config(upstream_url)
    config["context"]["trusted_proxies"] = ["10.255.0.0/16"]
    config["listen"].update(listen)
    config["flags"] = {"beta": {"type": "boolean", "status": "active", "default": False,
                                "rollout": 0}}
    config["routes"][0]["flags"] = "all"
    return config


async def test_underscored_field_names_are_dropped_before_anyone_reads_them(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(untrusted(upstream.url))
    seen = await echoed(f"{gw.url}/who", [
        ("X_User_Id", "admin"), ("X-User-Id", "admin"), ("X_Flag_Beta", "true"),
        ("X_Feature_Flags", "beta=?1"), ("Some_Other", "x"), ("X-Plain", "kept")])
    # A WSGI/CGI upstream reads X_User_Id as HTTP_X_USER_ID, the identity the gateway
    # dropped from this untrusted client; and X_Flag_Beta as the flag it decided.
    assert not [name for name in seen if "_" in name]
    assert "X-User-Id" not in seen
    assert seen.getall("X-Flag-Beta") == ["false"]
    assert seen["X-Plain"] == "kept"


async def test_underscores_in_headers_true_keeps_them(gateway_factory: Factory,
                                                      upstream: Upstream) -> None:
    gw = await gateway_factory(untrusted(upstream.url, underscores_in_headers=True))
    seen = await echoed(f"{gw.url}/who", [("Some_Other", "x")])
    assert seen["Some_Other"] == "x"


async def test_underscored_field_cannot_satisfy_a_route_header_match(
        gateway_factory: Factory, upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["routes"].insert(0, {"name": "canary", "upstream": "api",
                                "match": {"path_prefix": "/", "headers": {"X_Canary": "1"}}})
    gw = await gateway_factory(config)
    async with client_session() as s, s.get(f"{gw.url}/x", headers={"X_Canary": "1"}) as r:
        assert r.status == 200
    assert gw.process.pipeline.runtime.router.match(
        "GET", "/x", "", CIMultiDict(X_Canary="1")) is not None  # the route is there
    # ... but the request went through the catch-all, whose upstream saw no such field.
    assert "X_Canary" not in upstream.hits[-1].headers


async def test_identity_field_sent_twice_by_a_trusted_peer_is_forwarded_once(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(base_config(upstream.url))  # 127.0.0.0/8 is trusted
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.config.listen.port)
    writer.write(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"X-User-Id: alice\r\nX-User-Id: mallory\r\n"
                 b"X-Tenant-Id: t1\r\nx-tenant-id: t2\r\n"
                 b"X-Api-Key: k1\r\nX-Api-Key: k2\r\n"
                 b"X-Forwarded-For: 203.0.113.1\r\nX-Forwarded-For: 203.0.113.2\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    seen = upstream.hits[-1].headers
    assert seen.getall("X-User-Id") == ["alice"]  # the value the context read
    assert seen.getall("X-Tenant-Id") == ["t1"]
    assert seen.getall("X-Api-Key") == ["k1"]
    # The client-IP header is a hop list: every hop is kept and the peer appended.
    assert seen.getall("X-Forwarded-For") == ["203.0.113.1, 203.0.113.2, 127.0.0.1"]


@pytest.mark.parametrize("limited", [False, True], ids=["from-headers", "context"])
async def test_identity_values_are_read_as_the_upstream_gets_them(
        gateway_factory: Factory, upstream: Upstream, limited: bool) -> None:
    """The parser removes the whitespace around a field value (SP and HTAB, RFC 9110 §5.5);
    the context takes the value as it comes, nothing else removed, on a route that reads
    its flags straight from the headers and on one that builds a context for its limits:
    a flag for user `alice` is on for `  alice\t` and off for `alice` and a no-break space,
    the value the upstream gets too."""
    config = base_config(upstream.url)
    config["flags"] = {"vip": {"type": "boolean", "status": "active", "default": False,
                               "targeting": [{"attribute": "user_id", "operator": "in",
                                              "values": ["alice"]}]}}
    config["routes"][0]["flags"] = "all"
    if limited:
        config["rate_limits"] = {"per_user": {"algorithm": "fixed_window", "scope": "user",
                                              "limit": 100, "window": "60s"}}
        config["routes"][0]["rate_limits"] = ["per_user"]
    gw = await gateway_factory(config)
    port = gw.config.listen.port
    for sent, value, flag in ((b" \t alice \t", "alice", "true"),
                              ("alice\u00a0".encode(), "alice\u00a0", "false"),
                              (b"", "", "false")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"X-User-Id:" + sent + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        seen = upstream.hits[-1].headers
        assert seen.getall("X-User-Id") == [value]
        assert seen.getall("X-Flag-Vip") == [flag], sent


async def test_ignore_query_parameters_never_reach_the_upstream(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def reflect(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"<p>{request.query_string}</p>",
                            headers={"Cache-Control": "max-age=60"})

    upstream.on("/market/*", reflect)
    config = base_config(upstream.url)
    config["cache"] = {"memory_max": "4MiB", "max_object_size": "64KiB"}
    config["routes"].insert(0, {"name": "market", "match": {"path_prefix": "/market/"},
                                "upstream": "api",
                                "cache": {"ttl": "30s", "ignore_query": ["utm_source"]}})
    gw = await gateway_factory(config)
    async with client_session() as s:
        async with s.get(f"{gw.url}/market/a?utm_source=%3Cscript%3E&id=7") as r:
            assert (r.status, r.headers["X-Cache"]) == (200, "MISS")
        assert upstream.hits[-1].raw_path == "/market/a?id=7"
        async with s.get(f"{gw.url}/market/a?id=7") as r:  # a client who never sent it
            assert r.headers["X-Cache"] == "HIT"
            assert await r.text() == "<p>id=7</p>"
        async with s.get(f"{gw.url}/market/b?utm_source=x") as r:
            assert r.status == 200
        assert upstream.hits[-1].raw_path == "/market/b"
    assert upstream.count() == 2


async def test_gateway_answers_carry_no_server_version(gateway: InProcessGateway) -> None:
    async def server_field(url: str) -> str:
        async with client_session() as s, s.get(url) as r:
            return r.headers.get("Server", "")

    answers = [await server_field(f"{gateway.admin_url}/healthz"),
               await server_field(f"{gateway.admin_url}/admin/nothing")]
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.config.listen.port)
    writer.write(b"GARBAGE\r\n\r\n")  # the HTTP parser's own 400
    head = (await asyncio.wait_for(reader.read(), 5)).partition(b"\r\n\r\n")[0].decode()
    writer.close()
    assert head.split(" ")[1] == "400"
    answers += [line.partition(":")[2].strip() for line in head.split("\r\n")
                if line.lower().startswith("server:")]
    assert len(answers) == 3
    for value in answers:
        assert "/" not in value and "aiohttp" not in value.lower(), value


async def test_server_field_has_no_version_with_workers_either(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["routes"][0]["match"] = {"path_prefix": "/only/"}
    gw = process_factory(config, workers=2)
    async with client_session() as s:
        async with s.get(f"{gw.admin_url}/readyz") as r:  # the supervisor's own answer
            assert r.status == 200
            assert r.headers["Server"] == "sidecar-gateway"
        async with s.get(f"{gw.url}/elsewhere") as r:  # a worker's 404
            assert r.status == 404
            assert r.headers["Server"] == "sidecar-gateway"
