from __future__ import annotations

import re

from gateway.config.model import Match, Route, UpstreamRef
from gateway.routing import MethodNotAllowed, RouteMatch, Router, strip


def route(name: str, **match: object) -> Route:
    return Route(name, Match(**match), UpstreamRef("api", "api"))  # type: ignore[arg-type]


ROUTER = Router([
    route("exact", path="/health"),
    route("market", path_prefix="/api/v1/market/", methods=frozenset({"GET", "HEAD"})),
    route("reports", path_regex=re.compile(r"^/api/v1/reports/[0-9]+$")),
    route("internal", path_prefix="/internal/", host="api.internal"),
    route("canary", path_prefix="/c/", headers=(("X-Canary", "1"),)),
])


def test_first_full_match_wins() -> None:
    found = ROUTER.match("GET", "/api/v1/market/x", "h", {})
    assert isinstance(found, RouteMatch) and found.route.name == "market"


def test_method_mismatch_is_405_with_allow() -> None:
    assert ROUTER.match("POST", "/api/v1/market/x", "h", {}) == MethodNotAllowed(("GET", "HEAD"))


def test_no_match_is_none() -> None:
    assert ROUTER.match("GET", "/api/v1/reports/abc", "h", {}) is None
    assert ROUTER.match("GET", "/healthz", "h", {}) is None


def test_host_ignores_port_and_case() -> None:
    found = ROUTER.match("GET", "/internal/x", "API.internal:8080", {})
    assert isinstance(found, RouteMatch) and found.route.name == "internal"
    assert ROUTER.match("GET", "/internal/x", "other", {}) is None


def test_header_match() -> None:
    assert ROUTER.match("GET", "/c/x", "h", {}) is None
    found = ROUTER.match("GET", "/c/x", "h", {"X-Canary": "1"})
    assert isinstance(found, RouteMatch)


def test_strip_prefix() -> None:
    assert strip("/internal/users?x=1", "/internal") == "/users?x=1"
    assert strip("/internal", "/internal") == "/"
    assert strip("/internal?q=1", "/internal") == "/?q=1"
    assert strip("/other", "/internal") == "/other"
