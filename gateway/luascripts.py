"""Every Redis Lua script lives in the top-level `lua/` as a plain file.

Found at `gateway/lua` in a wheel (pyproject force-includes `lua/` there) and at `<repo>/lua`
in a checkout or an editable install.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent  # .../gateway
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
