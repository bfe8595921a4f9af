"""Semantic versions (semver.org 2.0) parsed to tuples that compare in precedence order."""

from __future__ import annotations

import re

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$"
)

# A release sorts after any of its pre-releases (semver 11.3): (1, ()) > (0, ("rc",)).
SemVer = tuple[int, int, int, tuple[int, tuple[tuple[int, int | str], ...]]]


def parse_semver(text: str) -> SemVer:
    """"2.7.0" -> comparable tuple. "2.7" and "v2" are accepted as 2.7.0 and 2.0.0."""
    m = _SEMVER.match(text.strip())
    if not m:
        raise ValueError(f"not a semantic version: {text!r}")
    major, minor, patch, pre = m.groups()
    if pre is None:
        rank: tuple[int, tuple[tuple[int, int | str], ...]] = (1, ())
    else:
        # Numeric identifiers sort below alphanumeric ones (semver 11.4.3).
        rank = (0, tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")))
    return (int(major), int(minor or 0), int(patch or 0), rank)
