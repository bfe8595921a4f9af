"""The L1 hit's shortcuts give exactly what the general path gives (issue 4, speed)."""

from __future__ import annotations

from dataclasses import replace

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache import policy as rfc
from gateway.cache.entry import Entry
from gateway.cache.stage import RoutePolicy, _hit_headers
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
    headers = rfc.client_headers(stored.headers.items(), route, stored=True, age=age)
    headers["Content-Length"] = str(len(stored.body))
    return list(headers.items())


def test_hit_headers_equal_client_headers_plus_content_length_in_order() -> None:
    for route in ROUTES:
        policy = RoutePolicy("r", route, frozenset(), 1.0,
                             hit_drop=rfc.dropped_fields(route, stored=True, age=True))
        for stored in map(entry, STORED):
            for age in (0.0, 7.9, 7.9, 3600.2):  # twice: the second from the prebuilt part
                assert list(_hit_headers(policy, stored, age).items()) == \
                    general(route, stored, age)


def test_prebuilt_headers_are_not_shared_by_a_refreshed_entry() -> None:
    route = RouteCache()
    policy = RoutePolicy("r", route, frozenset(), 1.0,
                         hit_drop=rfc.dropped_fields(route, stored=True, age=True))
    old = entry(STORED[0])
    _hit_headers(policy, old, 1.0)
    new = old.refreshed([("Server", "other"), ("Content-Length", "5")], 0.0, 1.0,
                        rfc.Freshness(60.0))
    assert _hit_headers(policy, new, 1.0)["Server"] == "other"
    assert replace(old, body=b"hi").client == {}
    assert _hit_headers(policy, old, 1.0)["Server"] == "nginx"  # the copy was not mutated


def test_route_key_memo_gives_url_key_and_stays_bounded() -> None:
    from gateway.cache import stage
    from gateway.cache.key import url_key

    policy = RoutePolicy("r", RouteCache(), frozenset({"utm"}), 1.0)
    for i in range(stage.KEY_MEMO + 10):
        url = f"HTTP://Example.com:80/p?b={i}&utm=x&a=1"
        assert policy.key(url) == url_key(url, frozenset({"utm"}))
        assert policy.key(url) == url_key(url, frozenset({"utm"}))
    assert len(policy.keys) <= stage.KEY_MEMO
