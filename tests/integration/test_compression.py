"""Response compression through the real gateway, decoded with the reference libraries
(zlib, brotli, zstandard). Each test names the rule it checks (RFC 9110 §8.4 / §12.5.3,
RFC 9111 §5.2.2.6, BREACH, the issue's cache and streaming rules)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import brotli
import orjson
import pytest
import zstandard
from aiohttp import web
from multidict import CIMultiDict

from tests.harness import InProcessGateway, Upstream, base_config, client_session

Factory = Callable[..., Awaitable[InProcessGateway]]

DOC = orjson.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 1.5}
                    for i in range(400)])  # ~27 KB of JSON, very compressible


def decode(coding: str | None, body: bytes) -> bytes:
    if coding is None:
        return body
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    raise AssertionError(f"unexpected coding {coding}")


def compressing_config(upstream_url: str, cached: bool = False, **route: Any
                       ) -> dict[str, Any]:
    config = base_config(upstream_url)
    config["compression"] = {"encodings": ["zstd", "br", "gzip"], "min_size": "1KiB",
                             "level": {"gzip": 6, "br": 5, "zstd": 3}}
    config["cache"] = {"memory_max": "16MiB", "max_object_size": "4MiB"}
    first: dict[str, Any] = {"name": "assets", "match": {"path_prefix": "/a/"},
                             "upstream": "api", **route}
    if cached:
        first["cache"] = {"ttl": "60s"}
    config["routes"] = [first,
                        {"name": "plain", "match": {"path_prefix": "/p/"}, "upstream": "api",
                         "compression": False},
                        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"}]
    return config


def answering(body: bytes = DOC, content_type: str = "application/json", status: int = 200,
              **headers: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        fields = {"Content-Type": content_type,
                  **{k.replace("_", "-"): v for k, v in headers.items()}}
        return web.Response(body=body if status not in (204, 304) else None, status=status,
                            headers=fields)

    return handler


async def fetch(url: str, method: str = "GET", **headers: str
                ) -> tuple[int, CIMultiDict[str], bytes]:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    async with client_session() as s, s.request(method, url, headers=sent) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


# ---------------------------------------------------------------- §12.5.3 negotiation

MATRIX = [
    ("zstd, br, gzip", "zstd"),
    ("gzip", "gzip"),
    ("br", "br"),
    ("x-gzip", "gzip"),                       # §8.4.1.3: x-gzip is gzip
    ("br;q=0.5, gzip;q=0.8", "gzip"),         # highest q wins
    ("gzip;q=1, br;q=1", "br"),               # a tie goes to the configured order
    ("*", "zstd"),                            # "*" matches every coding not listed
    ("*;q=0.5, br", "br"),
    ("br;q=0, *", "zstd"),
    ("gzip;q=0.4, identity;q=0.9", None),     # identity preferred over the coding
    ("identity", None),
    ("", None),                               # empty: no coding wanted
    ("deflate", None),                        # none we make
    ("identity;q=0", None),                   # nothing acceptable: identity all the same
    ("gzip;q=0, identity;q=0", None),
    ("gzip;q=2.5, br", "br"),                 # a malformed q drops that member only
]


@pytest.mark.parametrize(("accept", "coding"), MATRIX)
async def test_accept_encoding_negotiation_and_every_coding_decodes_to_the_original(
        gateway_factory: Factory, upstream: Upstream, accept: str, coding: str | None) -> None:
    upstream.on("/a/doc", answering())
    gw = await gateway_factory(compressing_config(upstream.url))
    status, headers, body = await fetch(f"{gw.url}/a/doc", Accept_Encoding=accept)
    assert status == 200
    assert headers.get("Content-Encoding") == coding
    assert decode(coding, body) == DOC
    assert "accept-encoding" in headers.get("Vary", "").lower()  # §12.5.5
    if coding is not None:
        assert len(body) < len(DOC) / 3
        assert headers.get("Content-Length") in (None, str(len(body)))


async def test_no_accept_encoding_field_gets_identity(gateway_factory: Factory,
                                                      upstream: Upstream) -> None:
    upstream.on("/a/doc", answering())
    gw = await gateway_factory(compressing_config(upstream.url))
    upstream.on("/a/gz", answering(gzip.compress(DOC), Content_Encoding="gzip"))
    async with client_session(skip_auto_headers=("Accept-Encoding",)) as s:
        async with s.get(f"{gw.url}/a/doc") as r:
            assert "Accept-Encoding" not in r.request_info.headers
            assert "Content-Encoding" not in r.headers
            assert "Vary" not in r.headers  # as the upstream wrote it (README)
            assert await r.read() == DOC
        async with s.get(f"{gw.url}/a/gz") as r:  # a coding it never asked for: decoded
            assert "Content-Encoding" not in r.headers
            assert await r.read() == DOC


# ---------------------------------------------------------------- exclusions

@pytest.mark.parametrize(("path", "handler", "method", "request_headers"), [
    ("/a/small", answering(b'{"tiny": true}'), "GET", {}),                  # under min_size
    ("/a/png", answering(DOC, content_type="image/png"), "GET", {}),       # type not listed
    ("/a/nt", answering(Cache_Control="no-transform"), "GET", {}),          # RFC 9111 §5.2.2.6
    ("/a/cookie", answering(Set_Cookie="sid=1"), "GET", {}),                 # BREACH
    ("/a/doc", answering(), "GET", {"Cookie": "sid=1"}),                     # BREACH
    ("/a/doc", answering(), "GET", {"Authorization": "Bearer x"}),           # BREACH
    ("/a/none", answering(status=204), "GET", {}),
    ("/p/doc", answering(), "GET", {}),                                       # route off
])
async def test_responses_that_are_never_compressed(
        gateway_factory: Factory, upstream: Upstream, path: str, handler: Any, method: str,
        request_headers: dict[str, str]) -> None:
    upstream.on(path, handler)
    gw = await gateway_factory(compressing_config(upstream.url))
    status, headers, body = await fetch(f"{gw.url}{path}", method,
                                        Accept_Encoding="gzip, br, zstd", **request_headers)
    assert "Content-Encoding" not in headers
    if method == "GET" and status == 200:
        assert body == (await handler(None)).body


async def test_a_route_that_opts_in_compresses_beside_cookies(gateway_factory: Factory,
                                                              upstream: Upstream) -> None:
    upstream.on("/a/doc", answering(Set_Cookie="sid=1"))
    gw = await gateway_factory(compressing_config(upstream.url, compression="always"))
    _, headers, body = await fetch(f"{gw.url}/a/doc", Accept_Encoding="br", Cookie="a=b")
    assert headers["Content-Encoding"] == "br"
    assert decode("br", body) == DOC


async def test_already_encoded_body_passes_as_it_came(gateway_factory: Factory,
                                                      upstream: Upstream) -> None:
    coded = gzip.compress(DOC)
    upstream.on("/a/gz", answering(coded, Content_Encoding="gzip"))
    gw = await gateway_factory(compressing_config(upstream.url))
    _, headers, body = await fetch(f"{gw.url}/a/gz", Accept_Encoding="gzip, br")
    assert headers["Content-Encoding"] == "gzip"
    assert body == coded


async def test_206_is_never_compressed(gateway_factory: Factory, upstream: Upstream) -> None:
    async def ranged(request: web.Request) -> web.StreamResponse:
        return web.Response(status=206, body=DOC[:2000], headers={
            "Content-Type": "application/json",
            "Content-Range": f"bytes 0-1999/{len(DOC)}"})

    upstream.on("/a/range", ranged)
    gw = await gateway_factory(compressing_config(upstream.url))
    status, headers, body = await fetch(f"{gw.url}/a/range", Accept_Encoding="gzip",
                                        Range="bytes=0-1999")
    assert status == 206
    assert "Content-Encoding" not in headers
    assert body == DOC[:2000]


# ---------------------------------------------------------------- validators (§8.8)

async def test_strong_etag_is_distinct_per_coding_and_if_none_match_gets_304(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/a/doc", answering(ETag='"v1"', Cache_Control="max-age=60"))
    gw = await gateway_factory(compressing_config(upstream.url, cached=True))
    tags = {}
    for coding in ("zstd", "br", "gzip", "identity"):
        _, headers, _ = await fetch(f"{gw.url}/a/doc", Accept_Encoding=coding)
        tags[coding] = headers["ETag"]
    assert tags == {"zstd": '"v1-zstd"', "br": '"v1-br"', "gzip": '"v1-gzip"',
                    "identity": '"v1"'}
    status, headers, body = await fetch(f"{gw.url}/a/doc", Accept_Encoding="br",
                                        If_None_Match='"v1-br"')
    assert (status, headers["ETag"], body) == (304, '"v1-br"', b"")
    # A tag of another coding's bytes does not match what this client would get... unless
    # it names the same content: the stored response is validated as the identity tag.
    status, headers, _ = await fetch(f"{gw.url}/a/doc", Accept_Encoding="br",
                                     If_None_Match='"v0-br"')
    assert status == 200 and headers["Content-Encoding"] == "br"


async def test_if_range_with_a_coded_tag_is_answered_whole(gateway_factory: Factory,
                                                           upstream: Upstream) -> None:
    upstream.on("/a/doc", answering(ETag='"v1"', Cache_Control="max-age=60"))
    gw = await gateway_factory(compressing_config(upstream.url, cached=True))
    await fetch(f"{gw.url}/a/doc", Accept_Encoding="br")
    status, headers, body = await fetch(f"{gw.url}/a/doc", Accept_Encoding="br",
                                        Range="bytes=0-9", If_Range='"v1-br"')
    assert status == 200
    assert decode(headers.get("Content-Encoding"), body) == DOC
    status, headers, body = await fetch(f"{gw.url}/a/doc", Accept_Encoding="br",
                                        Range="bytes=0-9", If_Range='"v1"')
    assert (status, body) == (206, DOC[:10])
    assert "Content-Encoding" not in headers


# ---------------------------------------------------------------- streaming

async def test_a_streamed_body_of_unknown_length_is_coded_chunk_by_chunk(
        gateway_factory: Factory, upstream: Upstream) -> None:
    async def streaming(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(50):
            await response.write(DOC)
        await response.write_eof()
        return response

    upstream.on("/a/stream", streaming)
    gw = await gateway_factory(compressing_config(upstream.url))
    for coding in ("zstd", "br", "gzip"):
        _, headers, body = await fetch(f"{gw.url}/a/stream", Accept_Encoding=coding)
        assert headers["Content-Encoding"] == coding
        assert "Content-Length" not in headers
        assert decode(coding, body) == DOC * 50


async def test_event_stream_chunks_reach_the_client_as_they_are_sent(
        gateway_factory: Factory, upstream: Upstream) -> None:
    release = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first event " + b"x" * 2000 + b"\n\n")
        await release.wait()
        await response.write_eof()
        return response

    upstream.on("/a/events", events)
    gw = await gateway_factory(compressing_config(upstream.url))
    async with client_session() as s, s.get(f"{gw.url}/a/events",
                                            headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        inflater = zlib.decompressobj(31)
        seen = b""
        async with asyncio.timeout(5):
            while b"\n\n" not in seen:
                seen += inflater.decompress(await r.content.readany())
        assert seen.startswith(b"data: first event")
        release.set()


# ---------------------------------------------------------------- decompression

@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_upstream_coding_the_client_cannot_read_is_decoded(
        gateway_factory: Factory, upstream: Upstream, coding: str) -> None:
    coded = {"gzip": gzip.compress, "br": brotli.compress,
             "zstd": zstandard.ZstdCompressor().compress}[coding](DOC)
    upstream.on("/a/coded", answering(coded, Content_Encoding=coding, ETag='"u1"'))
    gw = await gateway_factory(compressing_config(upstream.url))
    _, headers, body = await fetch(f"{gw.url}/a/coded", Accept_Encoding="identity")
    assert "Content-Encoding" not in headers
    assert body == DOC
    assert headers.get("ETag") != '"u1"'  # that tag names the coded bytes
    other = "gzip" if coding != "gzip" else "br"
    _, headers, body = await fetch(f"{gw.url}/a/coded", Accept_Encoding=other)
    assert headers["Content-Encoding"] == other  # decoded, then coded as this client reads
    assert decode(other, body) == DOC


@pytest.mark.parametrize("size", [200, 300_000])
async def test_a_corrupt_upstream_body_is_an_upstream_error_never_a_garbled_200(
        gateway_factory: Factory, upstream: Upstream, size: int) -> None:
    garbage = b"\x1f\x8b\x08\x00" + b"not gzip at all" * (size // 15)
    upstream.on("/a/bad", answering(garbage, Content_Encoding="gzip"))
    gw = await gateway_factory(compressing_config(upstream.url))
    status, headers, body = await fetch(f"{gw.url}/a/bad", Accept_Encoding="identity")
    assert status == 502
    assert headers["Content-Type"] == "application/problem+json"
    assert b"does not decode" in body


# ---------------------------------------------------------------- cache

async def test_each_coding_of_a_stored_response_is_made_once_and_served_from_cache(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/a/doc", answering(Cache_Control="max-age=60"))
    gw = await gateway_factory(compressing_config(upstream.url, cached=True))
    await fetch(f"{gw.url}/a/doc", Accept_Encoding="identity")  # the miss stores identity
    for coding in ("zstd", "br", "gzip", "identity"):
        for _ in range(3):
            _, headers, body = await fetch(f"{gw.url}/a/doc", Accept_Encoding=coding)
            assert headers["X-Cache"] == "HIT"
            assert decode(None if coding == "identity" else coding, body) == DOC
            if coding != "identity":
                assert headers["Content-Encoding"] == coding
                assert f"encoding={coding}" in headers["Cache-Status"]
    assert upstream.count("/a/doc") == 1
    assert gw.process.services is not None and gw.process.services.cache is not None
    memory = gw.process.services.cache.memory
    [entry] = [e for variants in memory.by_url.values() for e in variants.values()]
    assert sorted(entry.encoded) == ["br", "gzip", "zstd"]
    # The variants count against memory_max.
    assert memory.size == entry.size > len(DOC) + sum(map(len, entry.encoded.values()))


async def test_compressed_variants_reach_a_second_gateway_through_l2(
        gateway_factory: Factory, upstream: Upstream, redis_server: Any) -> None:
    upstream.on("/a/doc", answering(Cache_Control="max-age=60"))
    config = compressing_config(upstream.url, cached=True)
    config["redis"] = {"url": redis_server.url, "timeout": "1s"}
    config["cache"]["redis"] = True
    first = await gateway_factory(config, "first.yaml")
    # One Host for both: the cache keys on the URL the client asked for.
    host = "assets.example"
    await fetch(f"{first.url}/a/doc", Accept_Encoding="br", Host=host)
    await fetch(f"{first.url}/a/doc", Accept_Encoding="br", Host=host)  # codes and shares
    second_config = {**config, "listen": {**config["listen"], "port": _port()},
                     "admin": {**config["admin"], "port": _port()}}
    second = await gateway_factory(second_config, "second.yaml")
    found = await _in_l2(second, f"http://{host}/a/doc")
    assert found is not None and "br" in found.encoded
    _, headers, body = await fetch(f"{second.url}/a/doc", Accept_Encoding="br", Host=host)
    assert headers["X-Cache"] == "HIT" and headers["Content-Encoding"] == "br"
    assert decode("br", body) == DOC
    assert upstream.count("/a/doc") == 1


def _port() -> int:
    from tests.harness import free_port

    return free_port()


async def _in_l2(gw: InProcessGateway, url: str) -> Any:
    """The entry stored in L2 for `url` (as the cache keys it), once it carries a coding."""
    from gateway.cache.entry import decode as decode_entry
    from gateway.cache.key import url_key

    assert gw.process.services is not None and gw.process.services.cache is not None
    l2 = gw.process.services.cache.l2
    assert l2 is not None
    for _ in range(100):  # the first gateway writes L2 in the background
        for data in (await l2.link.client.hgetall(l2.url_key(url_key(url)))).values():
            entry = decode_entry(data)
            if entry is not None and entry.encoded:
                return entry
        await asyncio.sleep(0.05)
    return None


# ---------------------------------------------------------------- HEAD (RFC 9110 §9.3.2)
# A HEAD answer carries the fields the GET for the same request would: a cache after us
# freshens its stored GET answer with them (RFC 9111 §4.3.5). Only Content-Length may be
# missing: the coded length is known once that coding was made (README).

# Fields that differ between any two answers (clock, id, framing) or say how this one was
# answered (a miss, a hit) rather than what it represents.
_PER_ANSWER = frozenset({"date", "age", "x-request-id", "content-length", "transfer-encoding",
                         "connection", "keep-alive", "cache-status", "x-cache"})


async def answer(url: str, method: str, headers: dict[str, str]
                 ) -> tuple[int, CIMultiDict[str], bytes]:
    """One request with exactly `headers` (no Accept-Encoding unless they name one)."""
    async with client_session(skip_auto_headers=("Accept-Encoding",)) as s, \
            s.request(method, url, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


def representation(headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in headers.items() if k.lower() not in _PER_ANSWER)


def coding_said(headers: CIMultiDict[str]) -> str | None:
    """The `encoding` parameter of Cache-Status (the coding named to logs and caches)."""
    for member in headers.get("Cache-Status", "").split(";"):
        name, _, value = member.strip().partition("=")
        if name == "encoding":
            return value
    return None


async def coded_bytes(gw: InProcessGateway) -> dict[str, float]:
    """gateway_compression_bytes_total from the admin listener's /metrics."""
    async with client_session() as s, s.get(f"{gw.admin_url}/metrics") as r:
        text = await r.text()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("gateway_compression_bytes_total{")}


def assert_same_fields(head: CIMultiDict[str], get: CIMultiDict[str]) -> None:
    assert representation(head) == representation(get)
    assert coding_said(head) == coding_said(get)


GZ_DOC = gzip.compress(DOC)

# path, upstream answer, request fields, whether the GET's length is the HEAD's: absent
# where the GET's body is coded or decoded here (its coded length is known only by coding).
HEAD_CASES = [
    ("/a/doc", answering(ETag='"v1"'), {"Accept-Encoding": "br"}, False),
    ("/a/doc", answering(ETag='"v1"'), {"Accept-Encoding": "gzip;q=0.5, zstd"}, False),
    ("/a/doc", answering(ETag='"v1"'), {}, True),                     # no field: as it came
    ("/a/doc", answering(ETag='"v1"'), {"Accept-Encoding": "identity"}, True),  # Vary only
    ("/a/small", answering(b'{"tiny": true}'), {"Accept-Encoding": "br"}, True),
    ("/a/png", answering(content_type="image/png"), {"Accept-Encoding": "br"}, True),
    ("/a/nt", answering(Cache_Control="no-transform"), {"Accept-Encoding": "br"}, True),
    ("/a/cookie", answering(Set_Cookie="sid=1"), {"Accept-Encoding": "br"}, True),
    ("/a/doc", answering(), {"Accept-Encoding": "br", "Cookie": "sid=1"}, True),
    ("/a/doc", answering(), {"Accept-Encoding": "br", "Authorization": "Bearer x"}, True),
    ("/a/none", answering(status=204), {"Accept-Encoding": "br"}, True),
    ("/p/doc", answering(), {"Accept-Encoding": "br"}, True),          # route off
    ("/a/gz", answering(GZ_DOC, Content_Encoding="gzip", ETag='"u1"'),
     {"Accept-Encoding": "gzip, br"}, True),                            # accepted: as it came
    ("/a/gz", answering(GZ_DOC, Content_Encoding="gzip", ETag='"u1"'),
     {"Accept-Encoding": "identity"}, False),                           # decoded
    ("/a/gz", answering(GZ_DOC, Content_Encoding="gzip", ETag='"u1"'),
     {"Accept-Encoding": "br"}, False),                                 # decoded, coded br
    ("/a/gz", answering(GZ_DOC, Content_Encoding="gzip", ETag='"u1"'), {}, False),
]


@pytest.mark.parametrize(("path", "handler", "asked", "same_length"), HEAD_CASES, ids=[
    "coded", "coded-by-q", "no-accept-encoding", "identity", "small", "type", "no-transform",
    "set-cookie", "cookie", "authorization", "204", "route-off", "upstream-coded-accepted",
    "upstream-coded-decoded", "upstream-coded-recoded", "upstream-coded-no-field"])
async def test_9_3_2_a_forwarded_head_answer_has_the_fields_of_the_get(
        gateway_factory: Factory, upstream: Upstream, path: str, handler: Any,
        asked: dict[str, str], same_length: bool) -> None:
    upstream.on(path, handler)
    gw = await gateway_factory(compressing_config(upstream.url))
    status, get, _ = await answer(f"{gw.url}{path}", "GET", asked)
    before = await coded_bytes(gw)
    head_status, head, body = await answer(f"{gw.url}{path}", "HEAD", asked)
    assert upstream.hits[-1].method == "HEAD"  # asked upstream as it came
    assert (head_status, body) == (status, b"")
    assert_same_fields(head, get)
    if same_length:
        assert head.get("Content-Length") == get.get("Content-Length")
    else:
        assert "Content-Length" not in head
    assert await coded_bytes(gw) == before  # nothing coded for a HEAD


async def test_9_3_2_head_from_the_cache_names_the_coding_and_its_length_once_stored(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/a/doc", answering(ETag='"v1"', Cache_Control="max-age=60"))
    gw = await gateway_factory(compressing_config(upstream.url, cached=True))
    url = f"{gw.url}/a/doc"
    br = {"Accept-Encoding": "br"}
    # A HEAD miss goes upstream as a HEAD and stores nothing; the GET miss after it stores
    # the identity copy (coding as it streams).
    _, head, _ = await answer(url, "HEAD", br)
    assert (head["X-Cache"], upstream.hits[-1].method) == ("MISS", "HEAD")
    _, get, _ = await answer(url, "GET", br)
    assert get["X-Cache"] == "MISS" and get["Content-Encoding"] == "br"
    assert_same_fields(head, get)
    assert "Content-Length" not in head
    assert gw.process.services is not None and gw.process.services.cache is not None
    [entry] = [e for variants in gw.process.services.cache.memory.by_url.values()
               for e in variants.values()]
    assert entry.encoded == {}

    # A hit whose coding is not stored yet: the GET's fields, no length, nothing coded.
    before = await coded_bytes(gw)
    _, head, body = await answer(url, "HEAD", br)
    assert (head["X-Cache"], body) == ("HIT", b"")
    assert (head["Content-Encoding"], head["ETag"]) == ("br", '"v1-br"')
    assert "accept-encoding" in head["Vary"].lower()
    assert "Content-Length" not in head
    assert entry.encoded == {}  # no coding work to learn the length
    assert await coded_bytes(gw) == before
    _, get, body = await answer(url, "GET", br)  # codes and keeps the br copy
    assert get["X-Cache"] == "HIT" and decode("br", body) == DOC
    assert_same_fields(head, get)
    assert await coded_bytes(gw) != before  # the GET's coding counted, where the HEAD's was not

    # The coded copy stored: the HEAD gives its length, for this Accept-Encoding value and
    # for another that chooses the same coding.
    for accept in ("br", "br;q=1, gzip;q=0.5"):
        _, head, body = await answer(url, "HEAD", {"Accept-Encoding": accept})
        _, get, _ = await answer(url, "GET", {"Accept-Encoding": accept})
        assert body == b""
        assert_same_fields(head, get)
        assert head["Content-Length"] == get["Content-Length"] == str(len(entry.encoded["br"]))
    before = await coded_bytes(gw)
    await answer(url, "HEAD", br)
    assert await coded_bytes(gw) == before  # a GET of the stored copy counts; a HEAD not

    # No Accept-Encoding, or identity: the identity answer, its length, Vary as for the GET.
    for asked in ({}, {"Accept-Encoding": "identity"}):
        _, head, _ = await answer(url, "HEAD", asked)
        _, get, _ = await answer(url, "GET", asked)
        assert_same_fields(head, get)
        assert head["Content-Length"] == get["Content-Length"] == str(len(DOC))
    _, head, _ = await answer(url, "HEAD", {})
    assert "Content-Encoding" not in head and "Vary" not in head

    # §15.4.5: a 304 to a HEAD names the coded tag the client holds, as a GET's does.
    asked = {"Accept-Encoding": "br", "If-None-Match": '"v1-br"'}
    status, head, _ = await answer(url, "HEAD", asked)
    assert (status, head["ETag"]) == (304, '"v1-br"')
    assert sorted(entry.encoded) == ["br"]
    assert upstream.count("/a/doc") == 2  # the HEAD miss and the GET miss


async def test_9_3_2_head_of_a_stored_upstream_coded_body_the_client_cannot_read(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/a/gz", answering(GZ_DOC, Content_Encoding="gzip", ETag='"u1"',
                                   Cache_Control="max-age=60"))
    gw = await gateway_factory(compressing_config(upstream.url, cached=True))
    url = f"{gw.url}/a/gz"
    await answer(url, "GET", {"Accept-Encoding": "gzip"})  # stores the gzip bytes
    # Decoded for the GET (and coded again as the client reads): the HEAD says so, without
    # the upstream's strong tag (it names the gzip bytes) and, until a GET made that copy,
    # without a length. The identity copy made for one client serves the next.
    for asked, coding, made in (({"Accept-Encoding": "br"}, "br", False),
                                ({"Accept-Encoding": "identity"}, None, False),
                                ({}, None, True)):
        _, head, body = await answer(url, "HEAD", asked)
        assert (head["X-Cache"], body) == ("HIT", b"")
        assert head.get("Content-Encoding") == coding
        assert "ETag" not in head
        assert head.get("Content-Length") == (str(len(DOC)) if made else None)
        _, get, body = await answer(url, "GET", asked)
        assert decode(coding, body) == DOC
        assert_same_fields(head, get)
        _, head, _ = await answer(url, "HEAD", asked)  # the GET kept its copy
        assert_same_fields(head, get)
        assert head["Content-Length"] == get["Content-Length"]
    _, head, _ = await answer(url, "HEAD", {"Accept-Encoding": "gzip"})
    _, get, body = await answer(url, "GET", {"Accept-Encoding": "gzip"})
    assert body == GZ_DOC and head["ETag"] == '"u1"'
    assert_same_fields(head, get)
    assert head["Content-Length"] == get["Content-Length"] == str(len(GZ_DOC))
    assert upstream.count("/a/gz") == 1


async def test_9_3_2_head_on_a_route_that_compresses_beside_credentials(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/a/doc", answering(Set_Cookie="sid=1"))
    gw = await gateway_factory(compressing_config(upstream.url, compression="always"))
    asked = {"Accept-Encoding": "br", "Cookie": "a=b"}
    _, head, _ = await answer(f"{gw.url}/a/doc", "HEAD", asked)
    _, get, _ = await answer(f"{gw.url}/a/doc", "GET", asked)
    assert head["Content-Encoding"] == get["Content-Encoding"] == "br"
    assert_same_fields(head, get)
