"""The one boundary between the gateway and its dependencies' private names.

aiohttp's writer and protocol internals, redis-py's connection internals and
prometheus-client's value holders are not public API: a release inside our pins may
rename or reshape them, and the gateway would then serve broken responses instead of
failing. Every module of this package that reaches for such a name registers a probe with
`need`; `verify` runs them all once at start, and the gateway refuses to start with a
message that names the package, its installed version and what is missing.

Nothing outside `gateway.wire` may import a private name of those packages.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata


class DependencyMismatch(RuntimeError):
    """An installed dependency lacks a private name, or its shape, that the gateway uses."""


@dataclass(frozen=True, slots=True)
class Need:
    distribution: str  # as pip names it: "aiohttp", "redis", "prometheus-client"
    what: str  # what the gateway relies on, in words a maintainer can look up
    probe: Callable[[], object]  # raises (or returns False) when it is not there


_NEEDS: list[Need] = []


def need(distribution: str, what: str) -> Callable[[Callable[[], object]], Callable[[], object]]:
    """Register the decorated function as a probe of `distribution` for `what`."""

    def register(probe: Callable[[], object]) -> Callable[[], object]:
        _NEEDS.append(Need(distribution, what, probe))
        return probe

    return register


def installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


# Whose private names this package holds: named when a module of it cannot even be imported
# and the failing import does not say which package it came from.
WATCHED = ("aiohttp", "redis", "prometheus-client")


def _distribution_of(exc: BaseException) -> str | None:
    """The distribution whose module an ImportError names ("aiohttp" for aiohttp.http_writer)."""
    module = getattr(exc, "name", None) or ""
    top = module.partition(".")[0]
    names = metadata.packages_distributions().get(top, []) if top else []
    return names[0] if names else None


def _load_all() -> list[str]:
    """Import every module of this package, so that all their probes are registered; one
    line per module that cannot be imported (a private name gone at import time)."""
    found: list[str] = []
    for info in pkgutil.iter_modules(__path__, __name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - any failure to import is a mismatch
            dist = _distribution_of(exc)
            whose = (f"{dist} {installed_version(dist)}" if dist else
                     ", ".join(f"{d} {installed_version(d)}" for d in WATCHED))
            found.append(f"{whose}: {info.name} cannot be imported "
                         f"({type(exc).__name__}: {exc})")
    return found


def problems() -> list[str]:
    """One line per probe that fails (and per module of this package that cannot be
    imported), naming the package, its version and the need."""
    found = _load_all()
    for item in _NEEDS:
        try:
            ok = item.probe() is not False
            why = ""
        except Exception as exc:  # noqa: BLE001 - any failure of a probe is a mismatch
            ok, why = False, f" ({type(exc).__name__}: {exc})"
        if not ok:
            found.append(f"{item.distribution} {installed_version(item.distribution)}: "
                         f"{item.what} is missing or has another shape{why}")
    return found


def verify() -> None:
    """Raise DependencyMismatch listing every failed probe; the gateway then won't start."""
    found = problems()
    if found:
        raise DependencyMismatch(
            "the installed dependencies are not the ones this gateway was built for:\n  "
            + "\n  ".join(found)
            + "\ninstall versions inside the pins of pyproject.toml (the tested ones: "
              ".ci/constraints-*.txt)")


__all__ = ["WATCHED", "DependencyMismatch", "Need", "installed_version", "need", "problems",
           "verify"]
