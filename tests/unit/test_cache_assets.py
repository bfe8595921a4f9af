"""gateway.cache.assets, pure: which lifetimes a response gets from the type table and the
fingerprinted paths, and what stays the response's own."""

from __future__ import annotations

import re

from multidict import CIMultiDict

from gateway.cache import assets
from gateway.config.model import AssetPolicy, CacheSettings, RouteCache

SETTINGS = CacheSettings(
    asset_policies=(AssetPolicy(("text/css",), ttl=3600, browser_ttl=60),
                    AssetPolicy(("image/*",), ttl=600, browser_ttl=None, override=True)),
    immutable_paths=re.compile(r"\.[0-9a-f]{8}\.css$"))


CACHED = RouteCache()


def rewrite(path: str, route: RouteCache | None = CACHED, status: int = 200,
            **fields: str) -> assets.Rewrite:
    return assets.rewrite(path, status, CIMultiDict(
        {k.replace("_", "-"): v for k, v in fields.items()}), SETTINGS, route)


def test_policy_fills_in_what_the_response_leaves_open() -> None:
    change = rewrite("/a.css", Content_Type="text/css")
    assert dict(change.set) == {"Surrogate-Control": "max-age=3600", "Cache-Control": "max-age=60"}


def test_uncached_route_gets_only_the_browser_lifetime() -> None:
    change = rewrite("/a.css", None, Content_Type="text/css")
    assert dict(change.set) == {"Cache-Control": "max-age=60"}


def test_rfc9111_4_2_1_explicit_freshness_wins_without_override() -> None:
    assert rewrite("/a.css", Content_Type="text/css", Cache_Control="max-age=5") is assets.NOTHING
    assert rewrite("/a.css", Content_Type="text/css", Expires="0") is assets.NOTHING
    change = rewrite("/a.png", Content_Type="image/png", Cache_Control="max-age=5")
    assert dict(change.set) == {"Surrogate-Control": "max-age=600"}


def test_private_and_no_store_are_never_made_shareable() -> None:
    for directive in ("private", "no-store", "no-cache"):
        assert rewrite("/a.png", Content_Type="image/png",
                       Cache_Control=directive) is assets.NOTHING


def test_route_ttl_and_browser_ttl_are_more_specific() -> None:
    change = rewrite("/a.css", RouteCache(ttl=30, browser_ttl=5), Content_Type="text/css")
    assert dict(change.set) == {"Surrogate-Control": "max-age=30"}


def test_errors_are_not_assets() -> None:
    assert rewrite("/a.css", status=404, Content_Type="text/css") is assets.NOTHING
    assert rewrite("/app.0123abcd.css", status=404) is assets.NOTHING


def test_fingerprinted_path_is_immutable_for_a_year() -> None:
    change = rewrite("/app.0123abcd.css", Content_Type="text/css", Cache_Control="max-age=5")
    assert dict(change.set) == {"Cache-Control": "public, max-age=31536000, immutable"}
    assert "Surrogate-Control" in change.drop
