"""Range requests and the cache, through the real gateway against a counting upstream
(RFC 9110 §14, §13.1.5, §15.3.7, §15.5.17; RFC 9111 §3.3-3.4)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from email.utils import formatdate

import pytest
from aiohttp import web

from tests.harness import InProcessGateway, Upstream, client_session
from tests.integration.test_cache import cached_config, get

Factory = Callable[..., Awaitable[InProcessGateway]]

BODY = b"0123456789abcdefghij"  # 20 bytes
LAST_MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"  # well before Date: a strong validator


def now() -> str:
    return formatdate(usegmt=True)


def whole(etag: str = '"v1"') -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A 200 with the whole body whatever the request asks, storable for a minute."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BODY, headers={
            "Cache-Control": "max-age=60", "ETag": etag, "Last-Modified": LAST_MODIFIED,
            "Date": now(), "Content-Type": "text/plain"})

    return handler


async def stored(gateway_factory: Factory, upstream: Upstream) -> InProcessGateway:
    upstream.on("/market/r", whole())
    gw = await gateway_factory(cached_config(upstream.url))
    status, headers, body = await get(f"{gw.url}/market/r")
    assert (status, body, headers["X-Cache"]) == (200, BODY, "MISS")
    return gw


@pytest.mark.parametrize(("asked", "first", "last"), [
    ("bytes=2-5", 2, 5), ("bytes=15-", 15, 19), ("bytes=-3", 17, 19),
    ("bytes=10-999", 10, 19), ("bytes=-100", 0, 19), ("BYTES = 0-0", 0, 0),
])
async def test_rfc9110_14_2_range_answered_from_a_stored_200_with_206(
        gateway_factory: Factory, upstream: Upstream, asked: str, first: int, last: int
) -> None:
    gw = await stored(gateway_factory, upstream)
    status, headers, body = await get(f"{gw.url}/market/r", Range=asked)
    assert status == 206
    assert body == BODY[first:last + 1]
    assert headers["Content-Range"] == f"bytes {first}-{last}/20"  # RFC 9110 §14.4
    assert headers["Content-Length"] == str(last - first + 1)
    # §15.3.7: the fields a 200 would carry (validators, freshness, type) come along.
    assert headers["ETag"] == '"v1"' and headers["Content-Type"] == "text/plain"
    assert headers["X-Cache"] == "HIT" and "Age" in headers
    assert upstream.count("/market/r") == 1


@pytest.mark.parametrize("asked", ["bytes=20-", "bytes=100-200", "bytes=-0", "bytes=30-,-0"])
async def test_rfc9110_15_5_17_unsatisfiable_range_is_416_with_the_length(
        gateway_factory: Factory, upstream: Upstream, asked: str) -> None:
    gw = await stored(gateway_factory, upstream)
    status, headers, body = await get(f"{gw.url}/market/r", Range=asked)
    assert (status, body) == (416, b"")
    assert headers["Content-Range"] == "bytes */20"
    assert "Cache-Control" not in headers and "ETag" not in headers
    assert upstream.count("/market/r") == 1


@pytest.mark.parametrize("asked", [
    "bytes=0-1,5-6",  # several ranges: answered whole (RFC 9110 §14.2 allows it)
    "bytes=5-2", "bytes=abc", "items=0-1", "bytes=0-1;x", "bytes=",  # invalid: ignored
])
async def test_rfc9110_14_2_several_or_invalid_ranges_get_the_whole_200(
        gateway_factory: Factory, upstream: Upstream, asked: str) -> None:
    gw = await stored(gateway_factory, upstream)
    status, headers, body = await get(f"{gw.url}/market/r", Range=asked)
    assert (status, body) == (200, BODY)
    assert "Content-Range" not in headers and headers["X-Cache"] == "HIT"


@pytest.mark.parametrize(("if_range", "partial"), [
    ('"v1"', True),                      # the stored strong ETag
    ('"v0"', False),                     # another one: the representation changed
    ('W/"v1"', False),                   # weak: never matches (strong comparison)
    (LAST_MODIFIED, True),               # the stored Last-Modified, exactly
    ("Tue, 01 Dec 2026 09:00:00 GMT", False),
    ("not a date", False),
])
async def test_rfc9110_13_1_5_if_range_decides_between_206_and_the_whole(
        gateway_factory: Factory, upstream: Upstream, if_range: str, partial: bool) -> None:
    gw = await stored(gateway_factory, upstream)
    status, _, body = await get(f"{gw.url}/market/r", Range="bytes=0-3",
                                If_Range=if_range)
    assert (status, body) == ((206, BODY[:4]) if partial else (200, BODY))
    assert upstream.count("/market/r") == 1


async def test_rfc9110_13_1_5_if_range_date_needs_a_strong_last_modified(
        gateway_factory: Factory, upstream: Upstream) -> None:
    stamp = now()

    async def weak(request: web.Request) -> web.StreamResponse:
        # Date within a second of Last-Modified: it may have changed twice that second.
        return web.Response(body=BODY, headers={
            "Cache-Control": "max-age=60", "Last-Modified": stamp, "Date": stamp})

    upstream.on("/market/weak", weak)
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/weak")
    status, _, body = await get(f"{gw.url}/market/weak", Range="bytes=0-3", If_Range=stamp)
    assert (status, body) == (200, BODY)


async def test_rfc9110_13_2_2_a_matching_validator_wins_over_the_range(
        gateway_factory: Factory, upstream: Upstream) -> None:
    gw = await stored(gateway_factory, upstream)
    status, _, body = await get(f"{gw.url}/market/r", Range="bytes=0-3",
                                If_None_Match='"v1"')
    assert (status, body) == (304, b"")


async def test_rfc9110_14_2_range_on_head_is_ignored(gateway_factory: Factory,
                                                    upstream: Upstream) -> None:
    gw = await stored(gateway_factory, upstream)
    async with client_session() as s, s.head(f"{gw.url}/market/r",
                                             headers={"Range": "bytes=0-3"}) as r:
        assert r.status == 200 and r.headers["Content-Length"] == "20"


async def test_rfc9111_3_3_range_miss_goes_upstream_and_its_206_is_not_stored(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def ranged(request: web.Request) -> web.StreamResponse:
        headers = {"Cache-Control": "max-age=60", "ETag": '"v1"'}
        if request.headers.get("Range") == "bytes=2-5":
            return web.Response(status=206, body=BODY[2:6], headers={
                **headers, "Content-Range": "bytes 2-5/20"})
        return web.Response(body=BODY, headers=headers)

    upstream.on("/market/r", ranged)
    gw = await gateway_factory(cached_config(upstream.url))
    status, headers, body = await get(f"{gw.url}/market/r", Range="bytes=2-5",
                                      If_Range='"v1"')
    assert (status, body) == (206, BODY[2:6])
    assert headers["Content-Range"] == "bytes 2-5/20"
    assert headers["X-Cache"] == "MISS" and 'detail=range' in headers["Cache-Status"]
    sent = upstream.hits[-1].headers
    assert sent["Range"] == "bytes=2-5" and sent["If-Range"] == '"v1"'  # forwarded as is
    # Nothing stored: the plain GET that follows goes upstream, stores the whole, and
    # the same range is then answered from it.
    status, headers, body = await get(f"{gw.url}/market/r")
    assert (status, body, headers["X-Cache"]) == (200, BODY, "MISS")
    status, headers, body = await get(f"{gw.url}/market/r", Range="bytes=2-5")
    assert (status, body, headers["X-Cache"]) == (206, BODY[2:6], "HIT")
    assert upstream.count("/market/r") == 2


async def test_range_miss_does_not_make_the_url_hit_for_miss(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def ranged(request: web.Request) -> web.StreamResponse:
        if "Range" in request.headers:
            return web.Response(status=206, body=BODY[:2],
                                headers={"Content-Range": "bytes 0-1/20"})
        return web.Response(body=BODY, headers={"Cache-Control": "max-age=60"})

    upstream.on("/market/r", ranged)
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/r", Range="bytes=0-1")
    _, headers, _ = await get(f"{gw.url}/market/r")
    assert "stored" in headers["Cache-Status"]  # stored: not skipped as hit-for-miss
    _, headers, _ = await get(f"{gw.url}/market/r")
    assert headers["X-Cache"] == "HIT"


async def test_rfc5861_3_range_from_a_stale_entry_refreshes_the_whole(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def aging(request: web.Request) -> web.StreamResponse:
        first = not upstream.count("/market/s") > 1
        return web.Response(body=BODY, headers={  # the first answer is stale on arrival
            "Cache-Control": "max-age=10, stale-while-revalidate=60",
            **({"Age": "15"} if first else {})})

    upstream.on("/market/s", aging)
    gw = await gateway_factory(cached_config(upstream.url))
    await get(f"{gw.url}/market/s")
    status, headers, body = await get(f"{gw.url}/market/s", Range="bytes=0-3")
    assert (status, body, headers["X-Cache"]) == (206, BODY[:4], "STALE")
    for _ in range(50):  # the background refresh asks for the whole, without the range
        if upstream.count("/market/s") == 2:
            break
        await asyncio.sleep(0.02)
    assert "Range" not in upstream.hits[-1].headers
    await asyncio.sleep(0.05)
    status, headers, body = await get(f"{gw.url}/market/s", Range="bytes=0-3")
    assert (status, body, headers["X-Cache"]) == (206, BODY[:4], "HIT")
    assert upstream.count("/market/s") == 2
