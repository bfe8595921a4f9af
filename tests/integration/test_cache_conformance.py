"""RFC 9111 / 9110 / 9211 / 9213 conformance of the cache through the real gateway: what a
client sees when dates are not HTTP-dates, CDN-Cache-Control is not a Dictionary, a method
not known to be safe succeeds, a status outside the usual list has explicit freshness, the
client forces a forward, a 304 sets a cookie, or equivalent requests differ only in form.

Each test names the clause it checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.utils import formatdate

from aiohttp import web
from multidict import CIMultiDict

from tests.harness import InProcessGateway, Upstream, client_session
from tests.integration.test_cache import cached_config, counting, get

Factory = Callable[..., Awaitable[InProcessGateway]]

# Each read as 18 Aug 2050 by a lenient parser; none is an HTTP-date (RFC 9110 §5.6.7).
NOT_HTTP_DATES = (
    "Thu, 18 Aug 2050 02:01:18 +1000",
    "Thu, 18 Aug 2050 02:01:18 UTC",
    "Thu, 18 Aug 50 02:01:18 GMT",
    "Thu 18 Aug 2050 02:01:18 GMT",
    "Thu, 18  Aug  2050 02:01:18 GMT",
    "Thu, 18-Aug-2050 02:01:18 GMT",
    "Thu, 18 Aug 2050 02.01.18 GMT",
    "Thu, 18 Aug 2050 2:01:18 GMT",
)
FUTURE = "Thu, 18 Aug 2050 02:01:18 GMT"


def now_date() -> str:
    return formatdate(usegmt=True)


def answering(status: int, **headers: str
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """GET gets `status` with `headers` and a numbered body; other methods get a 200."""
    state = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            await request.read()
            return web.Response(text=f"{request.method} done")
        state["n"] += 1
        fields = {k.replace("_", "-"): v for k, v in headers.items()}
        return web.Response(status=status, body=f"{status}-{state['n']}".encode(),
                            headers=fields)

    return handler


async def send(url: str, method: str, body: bytes | None = None, **headers: str
               ) -> tuple[int, CIMultiDict[str], bytes]:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    async with client_session() as s, s.request(method, url, data=body, headers=sent) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


# ---------------------------------------------------------------- HTTP-dates

async def test_rfc9111_5_3_expires_not_an_http_date_is_already_expired(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def expiring(request: web.Request) -> web.Response:
        index = int(request.path.rsplit("/", 1)[1])
        value = FUTURE if index == len(NOT_HTTP_DATES) else NOT_HTTP_DATES[index]
        return web.Response(text="x", headers={"Date": now_date(), "Expires": value})

    upstream.on("/market/exp/*", expiring)
    gw = await gateway_factory(cached_config(upstream.url, ttl=None))
    for index in range(len(NOT_HTTP_DATES) + 1):
        for _ in range(2):
            _, headers, _ = await get(f"{gw.url}/market/exp/{index}")
    # The last one (a real HTTP-date in the future) was stored; none of the others.
    assert headers["X-Cache"] == "HIT"
    for index in range(len(NOT_HTTP_DATES)):
        assert upstream.count(f"/market/exp/{index}") == 2, NOT_HTTP_DATES[index]
    assert upstream.count(f"/market/exp/{len(NOT_HTTP_DATES)}") == 1


async def test_rfc9110_13_1_3_if_modified_since_not_an_http_date_is_ignored(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/lm", counting(Cache_Control="max-age=60",
                                       Last_Modified="Sun, 06 Nov 1994 08:49:37 GMT"))
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/lm")
    status, _, _ = await get(f"{gw.url}/market/lm", If_Modified_Since=FUTURE)
    assert status == 304
    for value in NOT_HTTP_DATES:
        status, headers, body = await get(f"{gw.url}/market/lm", If_Modified_Since=value)
        assert (status, body, headers["X-Cache"]) == (200, b"payload-1", "HIT"), value


# ---------------------------------------------------------------- RFC 9213

async def test_rfc9213_2_1_cdn_cache_control_not_a_dictionary_falls_back_to_cache_control(
        gateway_factory: Factory, upstream: Upstream) -> None:
    targeted = {"/market/junk": "max-age=10000, &&&&&", "/market/string": 'max-age="10000"',
                "/market/good": "max-age=10000"}
    for path, value in targeted.items():
        upstream.on(path, counting(CDN_Cache_Control=value, Cache_Control="no-store"))
    gw = await gateway_factory(cached_config(upstream.url))
    for path in targeted:
        for _ in range(2):
            _, headers, _ = await get(f"{gw.url}{path}")
    assert upstream.count("/market/junk") == 2
    assert upstream.count("/market/string") == 2
    assert upstream.count("/market/good") == 1 and headers["X-Cache"] == "HIT"


async def test_rfc9213_cdn_cache_control_reaches_the_client_surrogate_control_does_not(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/cdn", counting(CDN_Cache_Control="max-age=60, foo",
                                        Surrogate_Control="max-age=30",
                                        Cache_Control="max-age=5"))
    upstream.on("/market/other", counting(CDN_Cache_Control="no-store"))
    gw = await gateway_factory(cached_config(upstream.url))
    seen = []
    for path in ("/market/cdn", "/market/cdn", "/market/other"):
        _, headers, _ = await get(f"{gw.url}{path}")
        seen.append((headers["X-Cache"], headers.get("CDN-Cache-Control"),
                     headers.get("Surrogate-Control")))
    assert seen == [("MISS", "max-age=60, foo", None), ("HIT", "max-age=60, foo", None),
                    ("MISS", "no-store", None)]


# ---------------------------------------------------------------- §4.4 methods

async def test_rfc9111_4_4_methods_not_known_safe_pass_through_and_invalidate(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/m", answering(200, Cache_Control="max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    url = f"{gw.url}/market/m"
    for method in ("M-SEARCH", "PURGE", "LINK"):
        await get(url)
        _, headers, _ = await get(url)
        assert headers["X-Cache"] == "HIT"
        status, headers, body = await send(url, method, b"abc")
        # Relayed to the upstream as it came, body included, and answered from there.
        assert (status, body) == (200, f"{method} done".encode()), method
        assert upstream.hits[-1].method == method
        _, headers, _ = await get(url)
        assert headers["X-Cache"] == "MISS", method  # the stored response was invalidated


async def test_rfc9111_4_4_unknown_method_invalidates_same_origin_content_location(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def linked(request: web.Request) -> web.Response:
        await request.read()
        status = 500 if request.headers.get("X-Fail") else 200
        return web.Response(status=status, text="linked",
                            headers={"Content-Location": "/market/target"})

    upstream.on("/market/target", counting(Cache_Control="max-age=60"))
    upstream.on("/market/source", linked)
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/target")
    await send(f"{gw.url}/market/source", "LINK", X_Fail="1")  # a failure invalidates nothing
    _, headers, _ = await get(f"{gw.url}/market/target")
    assert headers["X-Cache"] == "HIT"
    await send(f"{gw.url}/market/source", "LINK")
    _, headers, _ = await get(f"{gw.url}/market/target")
    assert headers["X-Cache"] == "MISS"


async def test_rfc9111_4_4_extension_method_routed_past_the_cache_still_invalidates(
        gateway_factory: Factory, upstream: Upstream) -> None:
    """The cached route takes GET and HEAD only: M-SEARCH falls through to the catch-all,
    which has no cache policy and no `methods`, reaches the upstream and still invalidates."""
    upstream.on("/market/m", answering(200, Cache_Control="max-age=60"))
    config = cached_config(upstream.url)
    config["routes"][0]["match"]["methods"] = ["GET", "HEAD"]
    gw = await gateway_factory(config)
    await get(f"{gw.url}/market/m")
    status, headers, body = await send(f"{gw.url}/market/m", "M-SEARCH")
    assert (status, body, "X-Cache" in headers) == (200, b"M-SEARCH done", False)
    _, headers, _ = await get(f"{gw.url}/market/m")
    assert headers["X-Cache"] == "MISS"


# ---------------------------------------------------------------- §3 statuses

async def test_rfc9111_3_any_final_status_with_explicit_freshness_is_reused(
        gateway_factory: Factory, upstream: Upstream) -> None:
    statuses = (299, 303, 400, 499, 500, 503, 599)
    for status in statuses:
        upstream.on(f"/market/s{status}", answering(status, Cache_Control="max-age=60"))
    # Heuristic freshness stays with the heuristically cacheable statuses (§4.2.2).
    upstream.on("/market/heuristic", answering(400, Last_Modified="Sun, 06 Nov 1994 08:49:37 GMT"))
    gw = await gateway_factory(cached_config(upstream.url, ttl=None))
    for status in statuses:
        await get(f"{gw.url}/market/s{status}")
        got, headers, body = await get(f"{gw.url}/market/s{status}")
        assert (got, body, headers["X-Cache"]) == (status, f"{status}-1".encode(), "HIT")
    for _ in range(2):
        _, headers, _ = await get(f"{gw.url}/market/heuristic")
    assert headers["X-Cache"] == "MISS" and upstream.count("/market/heuristic") == 2


async def test_rfc9111_5_2_2_3_must_understand_stores_an_understood_status_despite_no_store(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/mu", counting(Cache_Control="must-understand, no-store, max-age=60"))
    upstream.on("/market/mu299", answering(299, Cache_Control="must-understand, max-age=60"))
    gw = await gateway_factory(cached_config(upstream.url))
    for _ in range(2):
        _, understood, _ = await get(f"{gw.url}/market/mu")
        _, unknown, _ = await get(f"{gw.url}/market/mu299")
    assert understood["X-Cache"] == "HIT" and upstream.count("/market/mu") == 1
    assert unknown["X-Cache"] == "MISS" and "detail=must-understand" in unknown["Cache-Status"]


# ---------------------------------------------------------------- RFC 9211

async def test_rfc9211_2_2_fwd_request_when_the_client_forces_a_forward(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def tagged(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"',
                                                     "Cache-Control": "max-age=60"})
        return web.Response(text="tagged", headers={"ETag": '"v1"',
                                                    "Cache-Control": "max-age=60"})

    upstream.on("/market/plain", counting(Cache_Control="max-age=60"))
    upstream.on("/market/tagged", tagged)
    gw = await gateway_factory(cached_config(upstream.url))
    forcing = ({"Cache_Control": "no-cache"}, {"Cache_Control": "max-age=0"},
               {"Pragma": "no-cache"})
    await get(f"{gw.url}/market/plain")
    await get(f"{gw.url}/market/tagged")
    for asked in forcing:
        _, plain, _ = await get(f"{gw.url}/market/plain", **asked)
        assert plain["Cache-Status"] == "gateway; fwd=request; fwd-status=200; stored", asked
        _, tagged_, _ = await get(f"{gw.url}/market/tagged", **asked)
        assert tagged_["X-Cache"] == "REVALIDATED"
        assert tagged_["Cache-Status"].startswith("gateway; fwd=request; fwd-status=304"), asked


# ---------------------------------------------------------------- Set-Cookie

async def test_rfc9111_4_3_4_a_304s_set_cookie_reaches_its_client_only(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def validated(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={
                "ETag": '"v1"', "Cache-Control": "max-age=60", "Set-Cookie": "session=alice"})
        return web.Response(text="page", headers={"ETag": '"v1"', "Cache-Control": "max-age=0"})

    upstream.on("/market/page", validated)
    gw = await gateway_factory(cached_config(upstream.url, ttl=None))
    _, first, _ = await get(f"{gw.url}/market/page")
    _, alice, _ = await get(f"{gw.url}/market/page")  # stale: revalidated, 304 with a cookie
    _, bob, body = await get(f"{gw.url}/market/page")
    assert (first["X-Cache"], alice["X-Cache"], bob["X-Cache"]) == ("MISS", "REVALIDATED", "HIT")
    assert alice.getall("Set-Cookie") == ["session=alice"]
    assert "Set-Cookie" not in bob and body == b"page"


# ---------------------------------------------------------------- Vary

async def test_rfc9110_12_5_equivalent_negotiation_fields_share_a_variant(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/market/v", counting(Cache_Control="max-age=60",
                                      Vary="Accept-Encoding, Accept-Language"))
    gw = await gateway_factory(cached_config(upstream.url))
    forms = [("gzip, br", "en-US, de;q=0.5"), ("BR,gzip", "de; q=0.5 ,en-us"),
             ("br ,  GZIP", "EN-us,de;q=0.5")]
    for encoding, language in forms:
        _, headers, body = await get(f"{gw.url}/market/v", Accept_Encoding=encoding,
                                     Accept_Language=language)
        assert body == b"payload-1"
    assert headers["X-Cache"] == "HIT" and upstream.count("/market/v") == 1
    _, headers, _ = await get(f"{gw.url}/market/v", Accept_Encoding="gzip",
                              Accept_Language="en-US, de;q=0.5")
    assert headers["X-Cache"] == "MISS"  # a different value is a different variant
