"""One canonical request target (RFC 3986 §6.2.2, §5.2.4; RFC 9112 §3.2) through the real
gateway, over raw sockets: an HTTP client would normalise these targets itself.

Routing, strip_prefix, rate-limit rules, the cache key and the upstream request must all
see the same path, so none of the bypasses below works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tests.harness import InProcessGateway, Upstream, base_config

Factory = Callable[..., Awaitable[InProcessGateway]]


async def send(port: int, target: str, host: str | None = "api.example",
               extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """One request with `target` as it is on the request line; (status, fields, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {target} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    writer.write((head + extra + "Connection: close\r\n\r\n").encode("latin-1"))
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), fields, body


def routed(upstream_url: str, *routes: dict[str, Any], **listen: Any) -> dict[str, Any]:
    config = base_config(upstream_url)
    config["listen"].update(listen)
    config["routes"] = list(routes)
    return config


INTERNAL = {"name": "internal", "match": {"path_prefix": "/internal/",
                                          "host": "api.internal.example"},
            "upstream": "api", "strip_prefix": "/internal"}
DEFAULT = {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"}


def last_target(upstream: Upstream) -> str:
    return upstream.hits[-1].raw_path


async def test_encoded_dot_segments_cannot_dodge_a_routes_rate_limit(
        gateway_factory: Factory, upstream: Upstream) -> None:
    config = routed(upstream.url,
                    {"name": "auth", "match": {"path_prefix": "/api/v1/auth/"},
                     "upstream": "api", "rate_limits": ["login"]}, DEFAULT)
    config["rate_limits"] = {"login": {"algorithm": "sliding_window", "scope": "ip",
                                       "limit": 1, "window": "1m"}}
    gw = await gateway_factory(config)
    port = gw.config.listen.port
    assert (await send(port, "/api/v1/auth/login"))[0] == 200
    for sneaky in ("/api/v1/x/%2e%2e/auth/login", "/api/v1/x/../auth/login",
                   "/api/v1/%61uth/login", "/api//v1/auth/login"):
        status, _, _ = await send(port, sneaky)
        assert status == 429, sneaky
    assert upstream.count() == 1


async def test_dot_segments_never_reach_an_upstream_path_no_route_maps(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, {
        "name": "v1", "match": {"path_prefix": "/api/v1/"}, "upstream": "api",
        "strip_prefix": "/api/v1"}))
    port = gw.config.listen.port
    status, fields, _ = await send(port, "/api/v1/../../secret")  # is /secret: no route
    assert status == 404
    assert fields["content-type"] == "application/problem+json"
    status, _, body = await send(port, "/api/v1/../../../secret")  # above the root
    assert status == 400
    assert "above the root" in orjson.loads(body)["detail"]
    assert upstream.count() == 0
    assert (await send(port, "/api/v1/a/./b/../c"))[0] == 200
    assert last_target(upstream) == "/a/c"


async def test_merge_slashes_routes_and_forwards_the_merged_path(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, INTERNAL, DEFAULT))
    port = gw.config.listen.port
    assert (await send(port, "//internal//admin", "api.internal.example"))[0] == 200
    assert last_target(upstream) == "/admin"  # the internal route, stripped
    assert (await send(port, "//internal/admin", "other.example"))[0] == 200
    assert last_target(upstream) == "/internal/admin"  # the catch-all, as routed


async def test_merge_slashes_false_keeps_empty_segments_everywhere(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, INTERNAL, DEFAULT, merge_slashes=False))
    assert (await send(gw.config.listen.port, "//internal/admin",
                       "api.internal.example"))[0] == 200
    assert last_target(upstream) == "//internal/admin"  # not the internal route


async def test_percent_encoded_prefix_is_matched_and_stripped_alike(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, INTERNAL, DEFAULT))
    port = gw.config.listen.port
    assert (await send(port, "/%69nternal/admin?x=%2e", "api.internal.example"))[0] == 200
    assert last_target(upstream) == "/admin?x=%2e"  # the query as received
    assert (await send(port, "/internal/a%2fb%7e", "api.internal.example"))[0] == 200
    assert last_target(upstream) == "/a%2Fb~"  # escapes upper-cased, unreserved decoded


async def test_escaped_slash_is_kept_encoded_and_never_a_separator(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, INTERNAL, DEFAULT))
    assert (await send(gw.config.listen.port, "/internal%2Fadmin",
                       "api.internal.example"))[0] == 200
    assert last_target(upstream) == "/internal%2Fadmin"  # one segment: the catch-all


async def test_escaped_slashes_reject_answers_400(gateway_factory: Factory,
                                                  upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, DEFAULT, escaped_slashes="reject"))
    port = gw.config.listen.port
    for target in ("/a%2Fb", "/a%5cb", "/a\\b"):
        status, _, body = await send(port, target)
        assert status == 400, target
        assert "escaped_slashes" in orjson.loads(body)["detail"]
    assert upstream.count() == 0


async def test_invalid_escape_nul_fragment_and_dot_parameters_are_400(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, DEFAULT))
    port = gw.config.listen.port
    for target, why in (("/a%zz", "two hex digits"), ("/a%0", "two hex digits"),
                        ("/a%00b", "NUL"), ("/..", "above the root"), ("/a#b", "fragment"),
                        ("/public/..;/admin", "parameters")):
        status, fields, body = await send(port, target)
        assert status == 400, target
        assert fields["content-type"] == "application/problem+json"
        assert why in orjson.loads(body)["detail"], target
    assert upstream.count() == 0


async def test_rfc9112_3_2_2_absolute_form_authority_replaces_host(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, INTERNAL, DEFAULT))
    status, _, _ = await send(gw.config.listen.port,
                              "http://API.internal.example/internal/../internal/admin?q=1",
                              "other.example")
    assert status == 200
    hit = upstream.hits[-1]
    assert hit.raw_path == "/admin?q=1"  # origin-form, stripped by the internal route
    assert hit.headers.getall("Host") == ["api.internal.example"]
    assert hit.headers["X-Forwarded-Host"] == "api.internal.example"


async def test_rfc9112_3_2_host_must_be_exactly_one_valid_field(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await gateway_factory(routed(upstream.url, INTERNAL, DEFAULT))
    port = gw.config.listen.port
    status, _, _ = await send(port, "/internal/admin", "other.example",
                              "Host: api.internal.example\r\n")
    assert status == 400
    assert (await send(port, "/x", "victim.example/internal"))[0] == 400
    assert (await send(port, "/x", None))[0] == 400
    assert upstream.count() == 0


async def test_absolute_form_and_origin_form_share_one_cache_key(
        gateway_factory: Factory, upstream: Upstream) -> None:
    config = routed(upstream.url, {"name": "market", "match": {"path_prefix": "/market/"},
                                   "upstream": "api", "cache": {"ttl": "30s"}}, DEFAULT)
    config["cache"] = {"memory_max": "4MiB", "max_object_size": "64KiB"}
    gw = await gateway_factory(config)
    port = gw.config.listen.port
    status, fields, _ = await send(port, "http://a.example/market/./x", "b.example")
    assert (status, fields["x-cache"]) == (200, "MISS")
    status, fields, _ = await send(port, "/market//%78", "A.example")
    assert (status, fields["x-cache"]) == (200, "HIT")
    status, fields, _ = await send(port, "/market/x", "b.example")  # another authority
    assert (status, fields["x-cache"]) == (200, "MISS")
    assert upstream.count() == 2
