"""How an evaluated flag travels upstream: one header per flag and an RFC 8941 summary.

Pure text functions, computed once per (flag, outcome) when flags are compiled, so a request
only joins precomputed strings.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from typing import Any

import orjson

# RFC 8941 §3.1.2: key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
_SF_KEY = re.compile(r"^[a-z*][a-z0-9_\-.*]*$")
# RFC 8941 §3.3.3: sf-string holds printable ASCII only (%x20-7E).
_SF_STRING = re.compile(r"^[\x20-\x7e]*$")
_SF_INTEGER_MAX = 999_999_999_999_999  # §3.3.1: at most 15 digits
_SF_DECIMAL_MAX = 1e12  # §3.3.2: at most 12 integer digits


def header_name(prefix: str, key: str) -> str:
    """`X-Flag-` + `new_dashboard` -> `X-Flag-New-Dashboard` (the contract: `_` -> `-`).

    Field names are case-insensitive (RFC 9110 §5.1); the words are capitalised only to
    read like the contract's example.
    """
    return prefix + "-".join(word[:1].upper() + word[1:]
                             for word in key.replace("_", "-").split("-"))


def _decimal_text(value: float) -> str:
    text = repr(value)
    if "e" in text or "E" in text:  # 1e+20 is not "decimal": write out the digits
        text = format(decimal.Decimal(text), "f")
    return text


def header_value(value: Any) -> str:
    """Contract: true/false, numbers in decimal, strings as they are, else compact JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return _decimal_text(value)
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _sf_string(text: str) -> str | None:
    if not _SF_STRING.match(text):
        return None
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sf_item(value: Any) -> str | None:
    """The RFC 8941 bare item for a served value; None when it has no faithful form.

    Booleans ?1/?0, integers and decimals bare, printable-ASCII strings quoted (escaping `\\`
    and `"`), lists and objects as a string holding their compact JSON. Non-ASCII text, null,
    and numbers beyond RFC 8941's ranges have no form: such a flag is left out of the summary
    (its own header still carries it).
    """
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value) if abs(value) <= _SF_INTEGER_MAX else None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        rounded = round(value, 3)  # §4.1.5: at most three fractional digits
        if abs(rounded) >= _SF_DECIMAL_MAX:
            return None
        text = f"{rounded:.3f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    if isinstance(value, str):
        return _sf_string(value)
    if isinstance(value, (list, dict)):
        return _sf_string(json.dumps(value, separators=(",", ":"), ensure_ascii=True))
    return None


def sf_key_ok(key: str) -> bool:
    return _SF_KEY.match(key) is not None


def summary_member(key: str, value: Any) -> str | None:
    """`key=item` for the summary Dictionary, or None when the key or value has no sf form.

    Flag keys are used as they are: a key that is not a valid sf-key (upper case, or not
    starting with a lower-case letter or `*`) is left out of the summary rather than renamed,
    since a renamed key could collide with another flag's.
    """
    if not sf_key_ok(key):
        return None
    item = sf_item(value)
    return None if item is None else f"{key}={item}"
