"""The L1 hit's shortcuts give exactly what the general path gives."""

from __future__ import annotations

from dataclasses import replace

from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache import policy as rfc
from gateway.cache.entry import Entry
from gateway.cache.stage import RoutePolicy, _hit_head
from gateway.config.model import RouteCache

STORED = [
    [("Server", "nginx"), ("Content-Type", "text/plain"), ("Content-Length", "5"),
     ("Cache-Control", "max-age=60")],
    [("Age", "3"), ("Surrogate-Control", "max-age=600"), ("Surrogate-Key", "a b"),
     ("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
    [("CDN-Cache-Control", "max-age=9"), ("content-length", "5"), ("ETag", '"v1"')],
]
ROUTES = [RouteCache(), RouteCache(tags_header="Surrogate-Key"),
          RouteCache(browser_ttl=30.0), RouteCache(tags_header="surrogate-key", browser_ttl=0.0)]


def entry(headers: list[tuple[str, str]]) -> Entry:
    return Entry(url="http://h/p", variant="-", vary=(), vary_values=(), status=200,
                 reason="OK", headers=CIMultiDictProxy(CIMultiDict(headers)), body=b"hello",
                 initial_age=0.0, response_time=0.0, fresh=rfc.Freshness(60.0))


def general(route: RouteCache, stored: Entry, age: float) -> list[tuple[str, str]]:
    """The general path's fields, with what aiohttp's response adds when they are absent."""
    headers = rfc.client_headers(stored.headers.items(), route, stored=True, age=age)
    headers["Content-Length"] = str(len(stored.body))
    headers.setdefault("Content-Type", "application/octet-stream")
    headers.setdefault("Server", SERVER_SOFTWARE)
    return list(headers.items())


def by_name(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Fields grouped by name, each name's values in their order (RFC 9110 §5.3: only the
    order within one name carries meaning)."""
    return sorted(fields, key=lambda f: f[0].lower())  # sorted() is stable


def hit(policy: RoutePolicy, stored: Entry, age: float) -> list[tuple[str, str]]:
    head, varying = _hit_head(policy, stored, age)
    return [*head.fields.items(), *varying.items()]


def test_hit_head_equals_client_headers_plus_content_length() -> None:
    for route in ROUTES:
        policy = RoutePolicy("r", route, frozenset(), 1.0,
                             hit_drop=rfc.dropped_fields(route, stored=True, age=True))
        for stored in map(entry, STORED):
            for age in (0.0, 7.9, 7.9, 3600.2):  # twice: the second from the prebuilt part
                assert by_name(hit(policy, stored, age)) == by_name(general(route, stored, age))


def test_serialized_part_is_the_constant_fields_or_none_without_a_date() -> None:
    route = RouteCache()
    policy = RoutePolicy("r", route, frozenset(), 1.0,
                         hit_drop=rfc.dropped_fields(route, stored=True, age=True))
    undated, _ = _hit_head(policy, entry(STORED[0]), 1.0)
    assert undated.raw is None  # aiohttp adds the Date of each answer: not prebuilt
    dated, _ = _hit_head(policy, entry([*STORED[0], ("Date", "Fri, 27 Nov 2026 12:00:00 GMT")]),
                         1.0)
    assert dated.raw is not None
    assert b"HTTP/1.1 200 OK\r\n" + dated.raw + b"\r\n" == \
        _serialize_headers("HTTP/1.1 200 OK", dated.fields)


def test_prebuilt_headers_are_not_shared_by_a_refreshed_entry() -> None:
    route = RouteCache()
    policy = RoutePolicy("r", route, frozenset(), 1.0,
                         hit_drop=rfc.dropped_fields(route, stored=True, age=True))
    old = entry(STORED[0])
    _hit_head(policy, old, 1.0)
    new = old.refreshed([("Server", "other"), ("Content-Length", "5")], 0.0, 1.0,
                        rfc.Freshness(60.0))
    assert _hit_head(policy, new, 1.0)[0].fields["Server"] == "other"
    assert replace(old, body=b"hi").client == {}
    assert _hit_head(policy, old, 1.0)[0].fields["Server"] == "nginx"  # not mutated


def test_route_key_memo_gives_url_key_and_stays_bounded() -> None:
    from gateway.cache import stage
    from gateway.cache.key import url_key

    policy = RoutePolicy("r", RouteCache(), frozenset({"utm"}), 1.0)
    for i in range(stage.KEY_MEMO + 10):
        url = f"HTTP://Example.com:80/p?b={i}&utm=x&a=1"
        assert policy.key(url) == url_key(url, frozenset({"utm"}))
        assert policy.key(url) == url_key(url, frozenset({"utm"}))
    assert len(policy.keys) <= stage.KEY_MEMO


def test_memory_max_counts_the_prebuilt_head_a_hit_adds() -> None:
    date = ("Date", "Fri, 27 Nov 2026 12:00:00 GMT")
    long = ("X-Long", "v" * 2000)  # a large stored field must not be counted only once
    for headers in ([date], [*STORED[0], date], [*STORED[1], date, long]):
        stored = entry(headers)
        stored_fields = sum(len(k) + len(v) for k, v in stored.headers.items())
        for route in ROUTES:
            policy = RoutePolicy("r", route, frozenset(), 1.0,
                                 hit_drop=rfc.dropped_fields(route, stored=True, age=True))
            head, _ = _hit_head(policy, stored, 1.0)
            assert head.raw is not None
            prebuilt = sum(len(k) + len(v) for k, v in head.fields.items()) + len(head.raw)
            assert stored.size >= len(stored.body) + stored_fields + prebuilt
