"""Durations and sizes as the configuration writes them ("250ms", "5m", "8MiB")."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """Seconds from "250ms", "30s", "5m", "1h", "1d" or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 250ms, 30s or 5m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 30s or 5m, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from "512KiB", "8MiB", "1GiB" or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 512KiB or 8MiB, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(f"expected a size like 512KiB or 8MiB, got {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return size
