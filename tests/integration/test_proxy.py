"""The proxy path over real sockets: RFC 9110 pass-through, added and removed fields, errors."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from tests.harness import InProcessGateway, Upstream, base_config, client_session, free_port


def received(payload: bytes) -> dict[str, list[str]]:
    """Headers the echo upstream saw, lower-cased name -> values."""
    seen: dict[str, list[str]] = {}
    for name, value in orjson.loads(payload)["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


async def test_method_path_query_body_and_status_pass_through(gateway: InProcessGateway,
                                                              upstream: Upstream) -> None:
    async def created(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=201, body=body[::-1], headers={"X-Custom": "kept"})

    upstream.on("/items", created)
    async with client_session() as s:
        async with s.post(f"{gateway.url}/items?b=2&a=1", data=b"hello") as r:
            assert r.status == 201
            assert await r.read() == b"olleh"
            assert r.headers["X-Custom"] == "kept"
    assert upstream.hits[-1].path_qs == "/items?b=2&a=1"
    assert upstream.hits[-1].method == "POST"


async def test_upstream_errors_pass_through_untouched(gateway: InProcessGateway,
                                                      upstream: Upstream) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down for maintenance",
                            headers={"Retry-After": "7"})

    upstream.on("/fail", failing)
    async with client_session() as s, s.get(f"{gateway.url}/fail") as r:
        assert r.status == 503
        assert await r.text() == "down for maintenance"
        assert r.headers["Retry-After"] == "7"


async def test_forwarded_fields_and_request_id(gateway: InProcessGateway) -> None:
    async with client_session() as s:
        async with s.get(f"{gateway.url}/echo", headers={"Host": "shop.example"}) as r:
            seen = received(await r.read())
            generated = r.headers["X-Request-Id"]
        assert seen["x-forwarded-for"] == ["127.0.0.1"]
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-forwarded-host"] == ["shop.example"]
        assert seen["host"] == ["shop.example"]
        assert seen["x-request-id"] == [generated]
        assert len(generated) >= 16

        async with s.get(f"{gateway.url}/echo", headers={"X-Request-Id": "abc-123"}) as r:
            assert r.headers["X-Request-Id"] == "abc-123"
            assert received(await r.read())["x-request-id"] == ["abc-123"]
        async with s.get(f"{gateway.url}/echo", headers={"X-Request-Id": "bad id!"}) as r:
            assert r.headers["X-Request-Id"] != "bad id!"


async def test_upstream_gets_only_the_fields_the_client_sent(gateway: InProcessGateway) -> None:
    async with client_session(skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding",
                                                 "Content-Type")
                              ) as s:
        async with s.get(f"{gateway.url}/echo") as r:
            seen = received(await r.read())
        for added_by_client_libraries in ("user-agent", "accept", "accept-encoding",
                                          "content-type"):
            assert added_by_client_libraries not in seen
        async with s.post(f"{gateway.url}/echo", data=b"raw bytes",
                          headers={"User-Agent": "curl/8", "Accept": "text/plain"}) as r:
            seen = received(await r.read())
        assert seen["user-agent"] == ["curl/8"] and seen["accept"] == ["text/plain"]
        assert "content-type" not in seen and "accept-encoding" not in seen


async def _raw_get(url: str, head: str) -> None:
    """Send `head` (request line and fields) as written and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode() + b"\r\n")
    await writer.drain()
    assert (await reader.readline()).split()[1] == b"200"
    writer.close()
    await writer.wait_closed()


async def test_upstream_gets_fields_in_order_with_repeats_and_host_first(
        gateway: InProcessGateway, upstream: Upstream) -> None:
    def names(head: str) -> list[str]:
        return [k.decode().lower() for k, _ in upstream.hits[-1].raw_headers]

    # The usual shape (Host first) is passed on as built, repeats in place.
    head = ("GET /echo HTTP/1.1\r\nHost: shop.example\r\nX-B: 1\r\nX-A: 2\r\n"
            "X-B: 3\r\nConnection: close\r\n")
    await _raw_get(gateway.url, head)
    assert names(head)[:5] == ["host", "x-b", "x-a", "x-b", "x-forwarded-for"]
    assert upstream.hits[-1].headers.getall("X-B") == ["1", "3"]
    # Host not first: it still leaves first (RFC 9110 §7.2), the rest in their order.
    head = ("GET /echo HTTP/1.1\r\nX-B: 1\r\nHost: shop.example\r\nX-A: 2\r\nX-B: 3\r\n"
            "Connection: close\r\n")
    await _raw_get(gateway.url, head)
    assert names(head)[:5] == ["host", "x-b", "x-a", "x-b", "x-forwarded-for"]
    assert upstream.hits[-1].headers["Host"] == "shop.example"
    assert upstream.hits[-1].headers.getall("X-B") == ["1", "3"]
    # No Host at all (HTTP/1.0): the upstream's own authority.
    await _raw_get(gateway.url, "GET /echo HTTP/1.0\r\nX-B: 1\r\n")
    assert upstream.hits[-1].headers["Host"] == f"127.0.0.1:{upstream.port}"


async def test_forwarded_for_is_appended_from_a_trusted_proxy(gateway: InProcessGateway) -> None:
    async with client_session() as s:
        async with s.get(f"{gateway.url}/echo",
                         headers={"X-Forwarded-For": "203.0.113.9, 10.1.1.1"}) as r:
            seen = received(await r.read())
    assert seen["x-forwarded-for"] == ["203.0.113.9, 10.1.1.1, 127.0.0.1"]


async def test_hop_by_hop_fields_removed_both_ways(gateway: InProcessGateway,
                                                   upstream: Upstream) -> None:
    async def hoppy(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={
            "Connection": "X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic", "X-End-To-End": "yes",
        })

    upstream.on("/hop", hoppy)
    async with client_session() as s:
        async with s.get(f"{gateway.url}/echo", headers={
            "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "300",
            "TE": "trailers", "Proxy-Authorization": "Basic Zm9vOmJhcg==", "Trailer": "X-T",
            "Proxy-Connection": "keep-alive", "X-Stay": "1",
        }) as r:
            seen = received(await r.read())
        for name in ("x-drop-me", "keep-alive", "te", "proxy-authorization", "trailer",
                     "proxy-connection"):
            assert name not in seen, name
        assert seen["x-stay"] == ["1"]
        async with s.get(f"{gateway.url}/hop") as r:
            assert "X-Secret-Hop" not in r.headers
            assert "Keep-Alive" not in r.headers
            assert "Proxy-Authenticate" not in r.headers
            assert r.headers["X-End-To-End"] == "yes"


async def test_multiple_set_cookie_preserved(gateway: InProcessGateway,
                                             upstream: Upstream) -> None:
    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        return response

    upstream.on("/cookies", cookies)
    async with client_session() as s, s.get(f"{gateway.url}/cookies") as r:
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


async def test_head_204_and_304_have_no_body(gateway: InProcessGateway,
                                            upstream: Upstream) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def not_modified(request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"'})

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000)

    upstream.on("/empty", empty)
    upstream.on("/nm", not_modified)
    upstream.on("/sized", sized)
    async with client_session() as s:
        async with s.get(f"{gateway.url}/empty") as r:
            assert r.status == 204 and await r.read() == b""
        async with s.get(f"{gateway.url}/nm") as r:
            assert r.status == 304 and r.headers["ETag"] == '"v1"' and await r.read() == b""
        async with s.head(f"{gateway.url}/sized") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == "1000"
            assert await r.read() == b""
        # The connection is still usable after bodiless responses.
        async with s.get(f"{gateway.url}/sized") as r:
            assert len(await r.read()) == 1000


async def test_chunked_response_streams_through(gateway: InProcessGateway,
                                                upstream: Upstream) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"part{i};".encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    upstream.on("/chunked", chunked)
    async with client_session() as s, s.get(f"{gateway.url}/chunked") as r:
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.read() == b"part0;part1;part2;part3;part4;"


async def test_unknown_path_404_and_wrong_method_405(gateway_factory: object,
                                                     upstream: Upstream) -> None:
    config = base_config(upstream.url, routes=[
        {"name": "read", "match": {"path_prefix": "/ro/", "methods": ["GET", "HEAD"]},
         "upstream": "api"},
        {"name": "exact", "match": {"path": "/exact"}, "upstream": "api"},
    ])
    gw = await gateway_factory(config)  # type: ignore[operator]
    async with client_session() as s:
        async with s.get(f"{gw.url}/nowhere") as r:
            assert r.status == 404
            assert r.headers["Content-Type"] == "application/problem+json"
            body = orjson.loads(await r.read())
            assert body["status"] == 404 and body["title"] and body["type"]
            assert body["request_id"] == r.headers["X-Request-Id"]
            assert "/nowhere" in body["detail"]
        async with s.delete(f"{gw.url}/ro/x") as r:
            assert r.status == 405
            assert r.headers["Allow"] == "GET, HEAD"
            assert orjson.loads(await r.read())["status"] == 405


async def test_unreachable_upstream_502(gateway_factory: object) -> None:
    dead = free_port()
    gw = await gateway_factory(base_config(f"http://127.0.0.1:{dead}"))  # type: ignore[operator]
    async with client_session() as s, s.get(f"{gw.url}/x") as r:
        assert r.status == 502
        body = orjson.loads(await r.read())
        assert "unreachable" in body["detail"]
        assert body["request_id"] == r.headers["X-Request-Id"]


async def test_upstream_closing_without_answer_502(gateway_factory: object) -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await gateway_factory(base_config(f"http://127.0.0.1:{port}"))  # type: ignore[operator]
    async with client_session() as s, s.get(f"{gw.url}/x") as r:
        assert r.status == 502
        assert "broke" in orjson.loads(await r.read())["detail"]
    server.close()


async def test_upstream_timeout_504(gateway_factory: object, upstream: Upstream) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    upstream.on("/slow", slow)
    config = base_config(upstream.url)
    config["upstreams"]["api"]["timeout"] = "300ms"
    gw = await gateway_factory(config)  # type: ignore[operator]
    async with client_session() as s, s.get(f"{gw.url}/slow") as r:
        assert r.status == 504
        assert orjson.loads(await r.read())["status"] == 504


async def test_strip_prefix_and_host_match(gateway_factory: object, upstream: Upstream) -> None:
    config = base_config(upstream.url, routes=[
        {"name": "internal", "match": {"path_prefix": "/internal/", "host": "api.internal"},
         "upstream": "api", "strip_prefix": "/internal"},
        {"name": "rest", "match": {"path_prefix": "/"}, "upstream": "api"},
    ])
    gw = await gateway_factory(config)  # type: ignore[operator]
    async with client_session() as s:
        async with s.get(f"{gw.url}/internal/users?id=1", headers={"Host": "api.internal"}) as r:
            assert orjson.loads(await r.read())["path"] == "/users?id=1"
        async with s.get(f"{gw.url}/internal/users", headers={"Host": "other"}) as r:
            assert orjson.loads(await r.read())["path"] == "/internal/users"


async def test_read_write_upstream_split(gateway_factory: object, upstream: Upstream) -> None:
    replica = await Upstream().start()
    try:
        config = base_config(upstream.url, routes=[
            {"name": "rw", "match": {"path_prefix": "/"},
             "upstream": {"read": "replica", "write": "api"}},
        ])
        config["upstreams"]["replica"] = {"url": replica.url}
        gw = await gateway_factory(config)  # type: ignore[operator]
        async with client_session() as s:
            for method in ("GET", "HEAD", "OPTIONS"):
                async with s.request(method, f"{gw.url}/r") as r:
                    assert r.status == 200
            async with s.post(f"{gw.url}/w", data=b"x") as r:
                assert r.status == 200
        assert replica.count() == 3 and upstream.count() == 1
    finally:
        await replica.stop()


async def test_identity_headers_from_untrusted_peer_removed(gateway_factory: object,
                                                            upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["context"]["trusted_proxies"] = ["10.99.0.0/16"]  # the test client is not trusted
    gw = await gateway_factory(config)  # type: ignore[operator]
    async with client_session() as s:
        async with s.get(f"{gw.url}/echo", headers={
            "X-User-Id": "admin", "X-Tenant-Id": "acme", "X-Forwarded-For": "1.2.3.4",
            "X-Api-Key": "k",
        }) as r:
            seen = received(await r.read())
    assert "x-user-id" not in seen and "x-tenant-id" not in seen and "x-api-key" not in seen
    assert seen["x-forwarded-for"] == ["127.0.0.1"]


async def test_client_sent_flag_headers_never_forwarded(gateway: InProcessGateway) -> None:
    async with client_session() as s:
        async with s.get(f"{gateway.url}/echo", headers={
            "X-Flag-New-Dashboard": "true", "X-Feature-Flags": "new_dashboard=?1",
        }) as r:
            seen = received(await r.read())
    assert "x-flag-new-dashboard" not in seen and "x-feature-flags" not in seen


async def test_expect_100_continue(gateway: InProcessGateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.config.listen.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
