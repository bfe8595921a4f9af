"""Route matching: compiled once at load, first full match in file order wins.

Like Starlette's router, a route either does not match, matches fully, or matches everything
but the method. With no full match, a partial one turns into 405 with `Allow`, so 404 and 405
fall out of one walk without special cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config.model import Route

ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allow: tuple[str, ...]


def _host_only(host: str) -> str:
    host = host.lower()
    if host.startswith("["):  # [::1]:8080
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        # Made once: a match allocates nothing, and the Host is parsed only when some
        # route asks for it.
        self._matches = tuple((route.match, RouteMatch(route)) for route in routes)
        self._uses_host = any(route.match.host is not None for route in routes)

    def match(
        self, method: str, path: str, host: str, headers: Mapping[str, str]
    ) -> RouteMatch | MethodNotAllowed | None:
        allowed: list[str] | None = None
        hostname = _host_only(host) if host and self._uses_host else ""
        for rule, found in self._matches:
            if rule.path is not None and path != rule.path:
                continue
            if rule.path_prefix is not None and not path.startswith(rule.path_prefix):
                continue
            if rule.path_regex is not None and not rule.path_regex.search(path):
                continue
            if rule.host is not None and hostname != rule.host.lower():
                continue
            if rule.headers and any(headers.get(name) != value for name, value in rule.headers):
                continue
            if rule.methods is not None and method not in rule.methods:
                if allowed is None:
                    allowed = []
                allowed.extend(x for x in sorted(rule.methods) if x not in allowed)
                continue
            return found
        if allowed:
            return MethodNotAllowed(tuple(allowed))
        return None


def strip(path: str, prefix: str | None) -> str:
    """The path the upstream sees once `strip_prefix` is taken off (never empty)."""
    if not prefix or not path.startswith(prefix):
        return path
    rest = path[len(prefix):]
    return rest if rest.startswith("/") else "/" + rest
