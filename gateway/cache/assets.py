"""Per-type lifetimes (`cache.asset_policies`) and fingerprinted paths (`cache.immutable_paths`),
as a rewrite of the upstream's freshness fields, decided by pure functions.

The decision is written into the response the cache then reads, so the cache's own rules
(gateway.cache.policy) apply unchanged: the edge lifetime goes in as `Surrogate-Control`
(which this cache reads first and never sends on, RFC 9213 §2.1 and the contract), the
browser lifetime as `Cache-Control`. Precedence, most specific first:
  1. a route's `ttl` with `override` (the cache applies it over any response field);
  2. the response's own explicit freshness (Cache-Control max-age / s-maxage, Expires,
     Surrogate-Control, CDN-Cache-Control), unless the asset policy sets `override`;
  3. the route's `ttl` / `browser_ttl`;
  4. the first asset policy whose types match the response's Content-Type.
A response marked private or no-store is never rewritten, override or not: a per-type
table must not make one user's answer shareable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.cache.directives import field_values
from gateway.compression.rules import type_listed
from gateway.config.model import AssetPolicy, CacheSettings, RouteCache

YEAR = 31_536_000
IMMUTABLE = f"public, max-age={YEAR}, immutable"
# Statuses whose answer is the asset itself; an error page must not live for a year.
ASSET_STATUSES = frozenset({200, 203})
_EXPLICIT = ("max-age", "s-maxage")
_PERSONAL = ("private", "no-store", "no-cache")


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Fields to set on the response (each replaces all lines of its name) and to drop."""

    set: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()


NOTHING = Rewrite()
MutableFields = CIMultiDict[str]


def _directives(headers: Mapping[str, str]) -> set[str]:
    return {d.strip().split("=", 1)[0].strip().lower()
            for value in field_values(headers, "Cache-Control") for d in value.split(",")}


def explicit_freshness(headers: Mapping[str, str]) -> bool:
    directives = _directives(headers)
    return bool(directives.intersection(_EXPLICIT)) or "Expires" in headers or \
        "Surrogate-Control" in headers or "CDN-Cache-Control" in headers


def policy_for(content_type: str | None, policies: tuple[AssetPolicy, ...]
               ) -> AssetPolicy | None:
    for policy in policies:
        if type_listed(content_type, policy.types):
            return policy
    return None


def rewrite(path: str, status: int, headers: Mapping[str, str], settings: CacheSettings,
            route: RouteCache | None) -> Rewrite:
    """What the asset rules change in this response (module docstring for the order)."""
    if status not in ASSET_STATUSES or _directives(headers).intersection(_PERSONAL):
        return NOTHING
    if settings.immutable_paths is not None and settings.immutable_paths.search(path):
        # Fingerprinted: the URL changes whenever the content does, so a year everywhere.
        return Rewrite(set=(("Cache-Control", IMMUTABLE),),
                       drop=("Expires", "Pragma", "Surrogate-Control"))
    policy = policy_for(headers.get("Content-Type"), settings.asset_policies)
    if policy is None or (explicit_freshness(headers) and not policy.override):
        return NOTHING
    changes: list[tuple[str, str]] = []
    drop: list[str] = []
    if route is not None:  # the edge lifetime matters to a cached route only
        edge = policy.ttl if route.ttl is None else route.ttl
        if edge is not None:
            changes.append(("Surrogate-Control", f"max-age={int(edge)}"))
            drop.append("CDN-Cache-Control")  # read before Cache-Control; the policy decides
    if policy.browser_ttl is not None and (route is None or route.browser_ttl is None):
        changes.append(("Cache-Control", f"max-age={int(policy.browser_ttl)}"))
        drop.append("Expires")
    return Rewrite(set=tuple(changes), drop=tuple(drop)) if changes else NOTHING


class AssetRules:
    """The rules of one config, applied to each upstream answer before the cache sees it."""

    def __init__(self, settings: CacheSettings, routes: Mapping[str, RouteCache | None]
                 ) -> None:
        self.settings = settings
        self.routes = dict(routes)

    def apply(self, route: str, path: str, status: int, headers: MutableFields) -> None:
        change = rewrite(path, status, headers, self.settings, self.routes.get(route))
        if change is NOTHING:
            return
        for name in change.drop:
            headers.popall(name, None)
        for name, value in change.set:
            headers.popall(name, None)
            headers[name] = value
