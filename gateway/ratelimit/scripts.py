"""Lua scripts shipped with the package: `gateway/lua` in a wheel (pyproject force-includes
the top-level `lua/` there), `<repo>/lua` in a checkout or editable install."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # .../gateway
_PLACES = (_PACKAGE / "lua", _PACKAGE.parent / "lua")


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str


@cache
def load_script(name: str) -> LuaScript:
    for directory in _PLACES:
        path = directory / f"{name}.lua"
        if path.is_file():
            source = path.read_text(encoding="utf-8")
            return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())
    raise FileNotFoundError(f"Lua script {name}.lua not found in "
                            + " or ".join(str(d) for d in _PLACES))
