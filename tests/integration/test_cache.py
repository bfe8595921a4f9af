"""The response cache through the real gateway, over real sockets, against a counting upstream.

Each test names the rule it checks (RFC 9111 section, RFC 5861, RFC 9211/9213 or the issue).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.harness import InProcessGateway, Upstream, base_config, client_session

Factory = Callable[..., Awaitable[InProcessGateway]]


def cached_config(upstream_url: str, **cache: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"ttl": "30s", "tags_header": "Surrogate-Key",
                              "ignore_query": ["utm_source"]}
    policy.update(cache)
    config = base_config(upstream_url)
    config["cache"] = {"memory_max": "4MiB", "max_object_size": "64KiB"}
    config["routes"] = [
        {"name": "market", "match": {"path_prefix": "/market/"}, "upstream": "api",
         "cache": policy},
        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"},
    ]
    return config


def counting(body: bytes = b"payload", delay: float = 0.0, **headers: str
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler answering `body` (numbered by hit) with the given headers."""
    state = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        state["n"] += 1
        n = state["n"]
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=body + b"-" + str(n).encode(),
                            headers={k.replace("_", "-"): v for k, v in headers.items()})

    return handler


async def get(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    async with client_session() as s, s.get(url, headers=sent) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_miss_then_hit_with_age_cache_status_and_x_cache(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/a", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    status, headers, body = await get(f"{gw.url}/market/a")
    assert (status, body) == (200, b"payload-1")
    assert headers["X-Cache"] == "MISS"
    assert headers["Cache-Status"] == "gateway; fwd=miss; fwd-status=200; stored"
    assert "Age" not in headers
    status, headers, body = await get(f"{gw.url}/market/a")
    assert (status, body) == (200, b"payload-1")
    assert headers["X-Cache"] == "HIT"
    assert headers["Cache-Status"].startswith("gateway; hit; ttl=")
    assert int(headers["Age"]) >= 0
    assert upstream.count("/market/a") == 1


async def test_route_without_cache_policy_is_not_cached(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/plain", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    for _ in range(2):
        status, headers, _ = await get(f"{gw.url}/plain")
        assert status == 200 and "X-Cache" not in headers
    assert upstream.count("/plain") == 2


async def test_rfc9111_3_no_store_private_and_set_cookie_are_not_stored(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/nostore", counting(Cache_Control="no-store"))
    upstream.on("/market/private", counting(Cache_Control="private, max-age=60"))
    upstream.on("/market/cookie", counting(Cache_Control="max-age=60", Set_Cookie="s=1"))
    gw = await gateway_factory(cached_config(upstream.url))
    for path in ("/market/nostore", "/market/private", "/market/cookie"):
        for _ in range(2):
            _, headers, _ = await get(f"{gw.url}{path}")
            assert headers["X-Cache"] == "MISS"
        assert upstream.count(path) == 2, path
    assert "detail=set-cookie" in headers["Cache-Status"]


async def test_route_store_set_cookie_stores_it(gateway_factory: Factory,
                                                upstream: Upstream) -> None:
    upstream.on("/market/cookie", counting(Cache_Control="max-age=60", Set_Cookie="s=1"))
    gw = await gateway_factory(cached_config(upstream.url, store_set_cookie=True))
    await get(f"{gw.url}/market/cookie")
    _, headers, _ = await get(f"{gw.url}/market/cookie")
    assert headers["X-Cache"] == "HIT" and upstream.count("/market/cookie") == 1


async def test_rfc9111_3_5_authorization_needs_public(gateway_factory: Factory,
                                                      upstream: Upstream) -> None:
    upstream.on("/market/mine", counting(Cache_Control="max-age=60"))
    upstream.on("/market/shared", counting(Cache_Control="public, max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    for _ in range(2):
        await get(f"{gw.url}/market/mine", Authorization="Bearer x")
        await get(f"{gw.url}/market/shared", Authorization="Bearer x")
    assert upstream.count("/market/mine") == 2
    assert upstream.count("/market/shared") == 1


async def test_rfc9213_targeted_fields_govern_surrogate_control_is_removed(
        gateway_factory: Factory, upstream: Upstream) -> None:
    # CDN-Cache-Control wins over Cache-Control: no-store for this cache (RFC 9213 §2.1).
    upstream.on("/market/cdn", counting(Cache_Control="no-store",
                                        CDN_Cache_Control="max-age=60"))
    upstream.on("/market/sur", counting(Cache_Control="max-age=60",
                                        Surrogate_Control="no-store"))
    gw = await gateway_factory(cached_config(upstream.url))
    for _ in range(2):
        _, cdn, _ = await get(f"{gw.url}/market/cdn")
        _, sur, _ = await get(f"{gw.url}/market/sur")
    assert upstream.count("/market/cdn") == 1 and upstream.count("/market/sur") == 2
    for headers in (cdn, sur):
        assert "Surrogate-Control" not in headers
    assert cdn["CDN-Cache-Control"] == "max-age=60"  # sent on for a CDN tier in front
    assert cdn["Cache-Control"] == "max-age=5" or cdn["Cache-Control"] == "no-store"


async def test_browser_ttl_rewrites_client_cache_control(gateway_factory: Factory,
                                                         upstream: Upstream) -> None:
    upstream.on("/market/b", counting(Cache_Control="s-maxage=600, max-age=600"))
    gw = await gateway_factory(cached_config(upstream.url, browser_ttl="5s"))
    _, miss, _ = await get(f"{gw.url}/market/b")
    _, hit, _ = await get(f"{gw.url}/market/b")
    assert miss["Cache-Control"] == "max-age=5"
    assert hit["Cache-Control"] == f"max-age={5 + int(hit['Age'])}"


async def test_route_ttl_applies_without_upstream_freshness_and_override_wins(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/none", counting())
    upstream.on("/market/zero", counting(Cache_Control="max-age=0"))
    gw = await gateway_factory(cached_config(upstream.url))
    for _ in range(2):
        await get(f"{gw.url}/market/none")
        await get(f"{gw.url}/market/zero")
    assert upstream.count("/market/none") == 1  # ttl 30s stood in
    assert upstream.count("/market/zero") == 2  # upstream's own 0 wins without override
    gw2 = await gateway_factory(cached_config(upstream.url, override=True), name="o.yaml")
    for _ in range(2):
        await get(f"{gw2.url}/market/zero")
    assert upstream.count("/market/zero") == 3


async def test_key_ignores_listed_query_params_and_sorts_the_rest(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/q", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/q?b=2&a=1&utm_source=mail")
    _, headers, body = await get(f"{gw.url}/market/q?a=1&b=2")
    assert headers["X-Cache"] == "HIT" and body == b"payload-1"
    _, headers, _ = await get(f"{gw.url}/market/q?a=1&b=3")
    assert headers["X-Cache"] == "MISS"


async def test_rfc9111_4_1_vary_selects_variants_and_vary_star_never_matches(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def by_language(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        return web.Response(text=f"lang={lang}", headers={
            "Cache-Control": "max-age=60", "Vary": "Accept-Language"})

    upstream.on("/market/v", by_language)
    upstream.on("/market/star", counting(Cache_Control="max-age=60", Vary="*"))
    gw = await gateway_factory(cached_config(upstream.url))
    for lang in ("en", "fr", "en", "fr"):
        _, _, body = await get(f"{gw.url}/market/v", Accept_Language=lang)
        assert body == f"lang={lang}".encode()
    assert upstream.count("/market/v") == 2
    _, headers, _ = await get(f"{gw.url}/market/v", Accept_Language="en")
    assert headers["X-Cache"] == "HIT"
    await get(f"{gw.url}/market/star")
    await get(f"{gw.url}/market/star")
    assert upstream.count("/market/star") == 2


async def test_head_is_served_from_a_stored_get(gateway_factory: Factory,
                                                upstream: Upstream) -> None:
    upstream.on("/market/h", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/h")
    async with client_session() as s, s.head(f"{gw.url}/market/h") as r:
        assert r.status == 200 and r.headers["X-Cache"] == "HIT"
        assert r.headers["Content-Length"] == str(len(b"payload-1"))
        assert await r.read() == b""
    assert upstream.count("/market/h") == 1


async def test_a_head_on_a_stale_entry_stores_the_new_streamed_body_its_get_brought(
        gateway_factory: Factory, upstream: Upstream) -> None:
    """A HEAD finding a stale entry revalidates it upstream as a GET (RFC 9110 §9.3.2 lets
    a cache use a HEAD to do so only with a GET). When the answer is a new 200 whose body
    streams (larger than one read), nobody reads it for the HEAD client: the gateway reads
    it whole and stores it, so the GET that follows is a hit on the new body."""
    version = {"n": 0}
    seen: list[str] = []
    big = 200_000  # streamed: not whole in the upstream connection's first read

    async def changing(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        version["n"] += 1
        body = str(version["n"]).encode() * big
        # The new body stays fresh for the GET after the HEAD: a second's freshness could
        # end at the next tick of the clock (Date has whole seconds) in between.
        fresh = "max-age=1" if version["n"] == 1 else "max-age=60"
        return web.Response(body=body, headers={"Cache-Control": fresh,
                                                "ETag": f'"v{version["n"]}"'})

    upstream.on("/market/s", changing)
    config = cached_config(upstream.url)
    config["cache"]["max_object_size"] = "1MiB"
    gw = await gateway_factory(config)
    status, _, body = await get(f"{gw.url}/market/s")
    assert status == 200 and body == b"1" * big
    await asyncio.sleep(1.2)
    async with client_session() as s, s.head(f"{gw.url}/market/s") as r:
        assert r.status == 200 and await r.read() == b""
        assert r.headers["ETag"] == '"v2"' and r.headers["Content-Length"] == str(big)
        assert "stored" in r.headers["Cache-Status"]
    status, headers, body = await get(f"{gw.url}/market/s")
    assert status == 200 and headers["X-Cache"] == "HIT" and body == b"2" * big
    assert seen == ["GET", "GET"]


async def test_rfc9111_4_3_2_client_conditional_gets_304_from_a_fresh_entry(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/e", counting(Cache_Control="max-age=60", ETag='"v1"'))
    gw = await gateway_factory(cached_config(upstream.url))
    status, headers, _ = await get(f"{gw.url}/market/e", If_None_Match='"v1"')
    assert status == 304 and headers["X-Cache"] == "MISS"  # stored, then answered from it
    status, headers, _ = await get(f"{gw.url}/market/e", If_None_Match='W/"v1"')
    assert status == 304 and headers["X-Cache"] == "HIT" and headers["ETag"] == '"v1"'
    status, _, body = await get(f"{gw.url}/market/e", If_None_Match='"v0"')
    assert status == 200 and body == b"payload-1"
    assert upstream.count("/market/e") == 1


async def test_rfc9111_4_3_4_stale_entry_revalidated_with_304_keeps_the_body(
        gateway_factory: Factory, upstream: Upstream) -> None:
    seen: list[str | None] = []

    async def validating(request: web.Request) -> web.Response:
        seen.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == '"v1"':
            # The 304's fields replace the stored ones (RFC 9111 4.3.4), max-age included:
            # a minute, so the next request is a hit however slow the machine.
            return web.Response(status=304, headers={"ETag": '"v1"', "Cache-Control":
                                                     "max-age=60", "X-Fresh": "yes"})
        return web.Response(text="body-v1", headers={"ETag": '"v1"', "Cache-Control": "max-age=1"})

    upstream.on("/market/r", validating)
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/r")
    await asyncio.sleep(1.2)
    status, headers, body = await get(f"{gw.url}/market/r")
    assert (status, body) == (200, b"body-v1")
    assert headers["X-Cache"] == "REVALIDATED" and headers["X-Fresh"] == "yes"
    assert "fwd=stale; fwd-status=304" in headers["Cache-Status"]
    assert seen == [None, '"v1"']
    _, headers, _ = await get(f"{gw.url}/market/r")
    assert headers["X-Cache"] == "HIT"


async def test_rfc5861_3_stale_while_revalidate_serves_stale_and_refreshes_once(
        gateway_factory: Factory, upstream: Upstream) -> None:
    hits = {"n": 0}

    async def slow_later(request: web.Request) -> web.Response:
        hits["n"] += 1
        n = hits["n"]
        if n > 1:
            await asyncio.sleep(1.5)  # the refresh is slow; stale answers must not wait for it
        return web.Response(text=f"v{n}", headers={"Cache-Control":
                                                   "max-age=1" if n == 1 else "max-age=60"})

    upstream.on("/market/s", slow_later)
    gw = await gateway_factory(cached_config(upstream.url, stale_while_revalidate="30s"))
    await get(f"{gw.url}/market/s")
    await asyncio.sleep(1.1)
    began = time.monotonic()
    results = await asyncio.gather(*(get(f"{gw.url}/market/s") for _ in range(5)))
    took = time.monotonic() - began
    assert all(h["X-Cache"] == "STALE" and b == b"v1" for _, h, b in results)
    assert "detail=stale-while-revalidate" in results[0][1]["Cache-Status"]
    assert took < 1.4  # answered before the 1.5 s refresh could have finished
    for _ in range(40):
        _, _, body = await get(f"{gw.url}/market/s")
        if body == b"v2":
            break
        await asyncio.sleep(0.1)
    assert body == b"v2"
    assert upstream.count("/market/s") == 2  # exactly one background refresh


async def test_rfc5861_4_stale_if_error_serves_stale_when_upstream_is_down(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/sie", counting(Cache_Control="max-age=1"))
    gw = await gateway_factory(cached_config(upstream.url, stale_if_error="5m"))
    await get(f"{gw.url}/market/sie")
    await asyncio.sleep(1.1)
    await upstream.stop()
    status, headers, body = await get(f"{gw.url}/market/sie")
    assert (status, body) == (200, b"payload-1")
    assert headers["X-Cache"] == "STALE" and 'detail=stale-if-error' in headers["Cache-Status"]


async def test_rfc5861_4_stale_if_error_on_5xx_and_never_with_must_revalidate(
        gateway_factory: Factory, upstream: Upstream) -> None:
    state = {"fail": False}

    def flaky(cc: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if state["fail"]:
                return web.Response(status=503, text="down")
            return web.Response(text="good", headers={"Cache-Control": cc})
        return handler

    upstream.on("/market/ok", flaky("max-age=1"))
    upstream.on("/market/strict", flaky("max-age=1, must-revalidate"))
    gw = await gateway_factory(cached_config(upstream.url, stale_if_error="5m"))
    await get(f"{gw.url}/market/ok")
    await get(f"{gw.url}/market/strict")
    await asyncio.sleep(1.1)
    state["fail"] = True
    status, headers, body = await get(f"{gw.url}/market/ok")
    assert (status, body, headers["X-Cache"]) == (200, b"good", "STALE")
    status, _, body = await get(f"{gw.url}/market/strict")
    assert (status, body) == (503, b"down")


async def test_rfc9111_4_4_unsafe_method_invalidates_target_and_location(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/item", counting(Cache_Control="max-age=60"))
    upstream.on("/market/list", counting(Cache_Control="max-age=60"))

    async def created(request: web.Request) -> web.Response:
        return web.Response(status=201, headers={"Location": "/market/list"})

    upstream.on("/market/new", created)
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/item")
    await get(f"{gw.url}/market/list")
    async with client_session() as s:
        async with s.post(f"{gw.url}/market/item", data=b"x") as r:
            assert r.status == 200
        async with s.post(f"{gw.url}/market/new", data=b"x") as r:
            assert r.status == 201
    _, headers, body = await get(f"{gw.url}/market/item")
    assert headers["X-Cache"] == "MISS" and body == b"payload-3"  # the POST was the 2nd
    _, headers, body = await get(f"{gw.url}/market/list")
    assert headers["X-Cache"] == "MISS" and body == b"payload-2"


async def test_collapsing_twenty_concurrent_misses_send_one_request(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/slow", counting(delay=1.0, Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    began = time.monotonic()
    results = await asyncio.gather(*(get(f"{gw.url}/market/slow") for _ in range(20)))
    took = time.monotonic() - began
    assert upstream.count("/market/slow") == 1
    assert all(s == 200 and b == b"payload-1" for s, _, b in results)
    assert took < 5.0  # about 1 s; generous on a shared machine


async def test_hit_for_miss_unstorable_answers_do_not_queue(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/p", counting(delay=0.5, Cache_Control="private"))
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/p")  # learns: not storable
    began = time.monotonic()
    results = await asyncio.gather(*(get(f"{gw.url}/market/p") for _ in range(10)))
    took = time.monotonic() - began
    assert upstream.count("/market/p") == 11
    assert len({b for _, _, b in results}) == 10  # each got its own upstream answer
    assert took < 3.0  # concurrent, not 10 x 0.5 s in a queue


async def test_large_objects_stream_through_uncached(gateway_factory: Factory,
                                                     upstream: Upstream) -> None:
    big = b"x" * (200 * 1024)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await response.prepare(request)
        for i in range(0, len(big), 16384):
            await response.write(big[i:i + 16384])
        await response.write_eof()
        return response

    upstream.on("/market/big", chunked)
    upstream.on("/market/biglen", counting(body=big, Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    for path in ("/market/big", "/market/biglen"):
        for _ in range(2):
            status, headers, body = await get(f"{gw.url}{path}")
            assert status == 200 and len(body) >= len(big)
            assert headers["X-Cache"] == "MISS"
        assert upstream.count(path) == 2
    assert gw.process.services is not None and gw.process.services.cache is not None
    assert gw.process.services.cache.memory.size == 0


async def test_purge_by_url_tag_and_all_in_process(gateway_factory: Factory,
                                                   upstream: Upstream) -> None:
    upstream.on("/market/t1", counting(Cache_Control="max-age=60", Surrogate_Key="p42 prices"))
    upstream.on("/market/t2", counting(Cache_Control="max-age=60", Surrogate_Key="prices"))
    upstream.on("/market/u", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    _, headers, _ = await get(f"{gw.url}/market/t1")
    assert "Surrogate-Key" not in headers
    for path in ("/market/t2", "/market/u"):
        await get(f"{gw.url}{path}")
    cache = gw.process.services.cache  # type: ignore[union-attr]
    assert cache is not None
    assert await cache.purge_tag("prices") == 2
    assert await cache.purge_url(f"{gw.url}/market/u?utm_source=x") == 1
    for path in ("/market/t1", "/market/t2", "/market/u"):
        _, headers, _ = await get(f"{gw.url}{path}")
        assert headers["X-Cache"] == "MISS", path
    assert await cache.purge_all() == 3
    assert len(cache.memory) == 0


async def test_metrics_count_lookups_per_route(gateway_factory: Factory,
                                               upstream: Upstream) -> None:
    from gateway import metrics
    from gateway.metrictally import TALLY

    upstream.on("/market/m", counting(Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))

    def value(result: str) -> float:
        TALLY.apply_all()  # as /metrics does before it renders
        return metrics.CACHE_LOOKUPS.labels("market", result)._value.get()  # type: ignore[no-any-return]

    hits, misses = value("hit"), value("miss")
    await get(f"{gw.url}/market/m")
    await get(f"{gw.url}/market/m")
    assert (value("hit") - hits, value("miss") - misses) == (1, 1)


async def test_rfc9111_4_4_unsafe_method_on_another_route_still_invalidates(
        gateway_factory: Factory, upstream: Upstream) -> None:
    """A GET-only cached route: the POST to the same URL falls through to the catch-all
    route, which has no cache policy; the stored GET must still be forgotten."""
    upstream.on("/market/item", counting(Cache_Control="max-age=60"))
    config = cached_config(upstream.url)
    config["routes"][0]["match"]["methods"] = ["GET", "HEAD"]
    config["routes"][0]["cache"]["ignore_query"] = ["utm_source"]
    config["routes"].append({"name": "rest", "match": {"path_prefix": "/"}, "upstream": "api"})
    gw = await gateway_factory(config)
    await get(f"{gw.url}/market/item?utm_source=x&a=1")
    assert (await get(f"{gw.url}/market/item?a=1"))[1]["X-Cache"] == "HIT"
    async with client_session() as s:
        async with s.post(f"{gw.url}/market/item?a=1", data=b"x") as r:
            assert r.status == 200
            assert "X-Cache" not in r.headers  # the catch-all route is not a cached route
    _, headers, body = await get(f"{gw.url}/market/item?a=1")
    assert headers["X-Cache"] == "MISS" and body == b"payload-3"


async def test_a_hit_on_the_wire_is_one_well_formed_head_and_its_body(
        gateway_factory: Factory, upstream: Upstream) -> None:
    """The prebuilt hit (stored fields serialized once, the varying ones per hit, rate-limit
    fields included) read off a raw socket: one status line, each field once, the body
    exactly Content-Length long, and the connection kept alive for the next request."""
    upstream.on("/market/raw", counting(Cache_Control="max-age=60", X_Stored="yes"))
    config = cached_config(upstream.url)
    config["rate_limits"] = {"ip": {"algorithm": "fixed_window", "limit": 100,
                                    "window": "60s", "scope": "ip"}}
    config["rate_limit_headers"] = "both"
    config["routes"][0]["rate_limits"] = ["ip"]
    gw = await gateway_factory(config)
    await get(f"{gw.url}/market/raw")  # stored
    port = config["listen"]["port"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # The Host of the stored request: the cache key is the URL the client asked for.
        request = (f"GET /market/raw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"X-Request-Id: wire-1\r\n\r\n").encode()
        for _ in range(2):  # the second on the same connection: kept alive, framed right
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")[:-2]
            assert lines[0] == "HTTP/1.1 200 OK"
            fields = [line.split(": ", 1) for line in lines[1:]]
            names = [name.lower() for name, _ in fields]
            assert len(names) == len(set(names)), names  # no field twice
            values = dict((name.lower(), value) for name, value in fields)
            body = await reader.readexactly(int(values["content-length"]))
            assert body == b"payload-1"
            assert values["x-cache"] == "HIT" and values["x-stored"] == "yes"
            assert values["x-request-id"] == "wire-1" and "age" in values and "date" in values
            assert "ratelimit" in values and "x-ratelimit-limit" in values
    finally:
        writer.close()
    assert upstream.count("/market/raw") == 1
