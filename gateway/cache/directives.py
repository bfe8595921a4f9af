"""Parsing the header fields the cache reads. Pure and total: bad input never raises.

What malformed values mean is the RFC's choice, not ours:
- a delta-seconds directive that is not a non-negative integer, or that appears twice with
  different values, makes the response stale (RFC 9111 §4.2.1, §1.2.2);
- an `Expires` that is not an HTTP-date is a time in the past (§5.3);
- an invalid `Age` is ignored (§5.1);
- a targeted field (RFC 9213) whose value is not a valid Dictionary, or whose known
  directives have values of the wrong type, is ignored as a whole (§2.1).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import cast

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache.sfv import parse_dictionary

# RFC 9111 §1.2.2: a cache may cap delta-seconds at 2^31 and must not treat a larger value
# as invalid.
MAX_DELTA = 2**31

# One directive: token, optionally "=" token or quoted-string (RFC 9111 §5.2).
_DIRECTIVE = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?\s*(?:,|$)'
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ETAG = re.compile(r'(W/)?"([^"]*)"|\*')
INVALID = -1  # what `Directives.seconds` returns for a malformed or conflicting value


@dataclass(frozen=True, slots=True)
class Directives:
    """Cache directives of one field (names lower-cased), first occurrence wins."""

    values: Mapping[str, str | None]
    conflicting: frozenset[str] = frozenset()
    valid: bool = True  # False: the field did not parse as a list of directives

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def seconds(self, name: str) -> int | None:
        """None if absent, INVALID if malformed or given twice differently, else the value."""
        if name not in self.values:
            return None
        if name in self.conflicting:
            return INVALID
        return delta_seconds(self.values[name])


EMPTY = Directives({})


def delta_seconds(value: str | None) -> int:
    if value is None or not value.isdigit() or not value.isascii():
        return INVALID
    return min(int(value), MAX_DELTA)


# Parsed single field lines of up to _MEMO_LINE characters, and none at all: a handful of
# values (no field, `no-store`, `max-age=60`) make up nearly every request and response.
_PARSED: dict[tuple[str, ...], Directives] = {}
_MEMO_ENTRIES = 256
_MEMO_LINE = 200


def parse_directives(fields: Iterable[str]) -> Directives:
    """Cache-Control (or a targeted field) from all its field lines, tolerant of junk."""
    lines = tuple(fields)
    found = _PARSED.get(lines)
    if found is not None:
        return found
    found = _parse_directives(lines)
    if len(lines) <= 1 and (not lines or len(lines[0]) <= _MEMO_LINE):
        if len(_PARSED) >= _MEMO_ENTRIES:
            _PARSED.clear()
        _PARSED[lines] = found
    return found


def field_directives(headers: Mapping[str, str], name: str) -> Directives:
    """`parse_directives(field_values(headers, name))` in one frame for a value parsed
    before (the usual one: each frame is ~1,000 instructions on a path that looks at
    Cache-Control on every request and answer)."""
    if type(headers) in _MULTI_DICTS:
        lines = tuple(headers.getall(name, ()))  # type: ignore[attr-defined]
    else:
        lines = tuple(field_values(headers, name))
    found = _PARSED.get(lines)
    return found if found is not None else parse_directives(lines)


def _parse_directives(fields: Iterable[str]) -> Directives:
    values: dict[str, str | None] = {}
    conflicting: set[str] = set()
    valid = True
    for field in fields:
        pos, text = 0, field.strip()
        while pos < len(text):
            match = _DIRECTIVE.match(text, pos)
            if match is None or match.end() == pos:
                valid = False  # skip to the next comma and keep what parsed
                comma = text.find(",", pos)
                pos = len(text) if comma < 0 else comma + 1
                continue
            pos = match.end()
            name, raw = match.group(1).lower(), match.group(2)
            value = _unquote(raw) if raw is not None else None
            if name in values:
                if values[name] != value:
                    conflicting.add(name)
            else:
                values[name] = value
    return Directives(values, frozenset(conflicting), valid)


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def parse_surrogate_control(fields: Iterable[str]) -> Directives:
    """Surrogate-Control (W3C Edge Architecture): `max-age=N+M` keeps N as the lifetime.

    The `+M` extension has no RFC meaning; we drop it rather than guess.
    """
    parsed = parse_directives(fields)
    values = dict(parsed.values)
    age = values.get("max-age")
    if age is not None and "+" in age:
        values["max-age"] = age.split("+", 1)[0]
    return Directives(values, parsed.conflicting, parsed.valid)


# RFC 9213 §2.1: the value types a targeted field's known directives must have (RFC 9111 §5.2.2
# defines them: delta-seconds are Integers, no-cache and private a Boolean or a String of field
# names, the rest Booleans). A field that breaks them is not consumed at all.
_INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate",
                                 "stale-if-error"})
_BOOLEAN_OR_STRING_DIRECTIVES = frozenset({"no-cache", "private"})
_BOOLEAN_DIRECTIVES = frozenset({"no-store", "public", "must-revalidate", "proxy-revalidate",
                                 "must-understand", "no-transform", "immutable"})


def parse_targeted(fields: Iterable[str]) -> Directives | None:
    """A targeted field (CDN-Cache-Control) as the Dictionary RFC 9213 §2.1 makes it, or None
    when it is empty or invalid, so the caller falls back to the next field."""
    members = parse_dictionary(fields)
    if not members:
        return None
    values: dict[str, str | None] = {}
    for name, member in members.items():
        if member is False:
            continue  # a Boolean false directive is not there (RFC 8941 §3.3.6)
        if name in _INTEGER_DIRECTIVES:
            if type(member) is not int or member < 0:
                return None
            values[name] = str(member)
        elif name in _BOOLEAN_OR_STRING_DIRECTIVES:
            if member is not True and type(member) is not str:  # an sf-token is not a String
                return None
            values[name] = None if member is True else str(member)
        elif name in _BOOLEAN_DIRECTIVES:
            if member is not True:
                return None
            values[name] = None
        else:  # an extension: its name is what a cache can act on
            values[name] = None if isinstance(member, (bool, bytes, tuple)) else str(member)
    return Directives(values)


# RFC 9110 §5.6.7: the three HTTP-date forms, case-sensitive, single spaces, two-digit time
# fields in range (23:59:60 allows a leap second), "GMT" only. email.utils, which accepts
# numeric zones, "UTC", two-digit years, missing commas and more (all invalid here), took
# 2.5-3.5 times as long; a precompiled pattern per form and tables for months and two-digit
# numbers keep this to about a microsecond on a miss (tests/perf/bench_http_date.py).
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = "([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)"
_IMF_FIXDATE = re.compile(f"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(
    "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    f"([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME_DATE = re.compile(f"{_DAY} {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})")
_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    start=1)}
_TWO_DIGITS = {f"{n:02d}": n for n in range(100)} | {f" {n}": n for n in range(10)}
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_YEAR_SECONDS = 365.2425 * 86400


def http_date(value: str | None, now: float | None = None) -> float | None:
    """Seconds since the epoch, or None when the value is not an HTTP-date (RFC 9110 §5.6.7).

    Strict: IMF-fixdate, the obsolete RFC 850 form or asctime, and nothing else. `now` only
    places an RFC 850 two-digit year (the current time when not given); no other form reads it.
    """
    if not value:
        return None
    fixed = _fixed_year_date(value)
    if fixed is not _OTHER_FORM:
        return cast("float | None", fixed)
    found = _RFC850_DATE.fullmatch(value)
    if found is not None:
        day, month, short_year, hour, minute, second = found.groups()
        year = _rfc850_year(_TWO_DIGITS[short_year], time.time() if now is None else now)
        return _timestamp(year, month, day, hour, minute, second)
    return None


_OTHER_FORM = object()


# Pure in `value` (unlike the RFC 850 form, whose century depends on `now`), and the same
# Date and Last-Modified values come back on every response of a second, or for hours.
@functools.lru_cache(maxsize=256)
def _fixed_year_date(value: str) -> float | object | None:
    """An IMF-fixdate or asctime date's timestamp (None when out of range), else _OTHER_FORM."""
    found = _IMF_FIXDATE.fullmatch(value)  # a field value has no surrounding whitespace
    if found is not None:
        day, month, year, hour, minute, second = found.groups()
        return _timestamp(int(year), month, day, hour, minute, second)
    found = _ASCTIME_DATE.fullmatch(value)
    if found is not None:
        month, day, hour, minute, second, year = found.groups()
        return _timestamp(int(year), month, day, hour, minute, second)
    return _OTHER_FORM


def _rfc850_year(short_year: int, now: float) -> int:
    """RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is the most recent
    past year with those digits (and one 50 or more years past is the next such year)."""
    this_year = 1970 + int(now // _YEAR_SECONDS)
    year = this_year - this_year % 100 + short_year
    if year > this_year + 50:
        year -= 100
    elif year <= this_year - 50:
        year += 100
    return year


def _timestamp(year: int, month: str, day: str, hour: str, minute: str,
               second: str) -> float | None:
    """The matched fields as seconds since the epoch; None for a day the month lacks."""
    try:
        days = date(year, _MONTHS[month], _TWO_DIGITS[day]).toordinal() - _EPOCH_DAY
    except ValueError:
        return None
    return float(days * 86400 + _TWO_DIGITS[hour] * 3600 + _TWO_DIGITS[minute] * 60
                 + _TWO_DIGITS[second])


def age_value(values: Iterable[str]) -> int:
    """RFC 9111 §5.1: first member of the list; anything but a non-negative integer is ignored."""
    for value in values:
        first = value.split(",", 1)[0].strip()
        age = delta_seconds(first)
        return 0 if age == INVALID else age
    return 0


def vary_names(values: Iterable[str]) -> tuple[str, ...] | None:
    """Lower-cased, sorted field names of Vary; None for `*` or an invalid member (never
    matches)."""
    names: set[str] = set()
    for value in values:
        for member in value.split(","):
            member = member.strip()
            if not member:
                continue
            if member == "*" or not _TOKEN.match(member):
                return None
            names.add(member.lower())
    return tuple(sorted(names))


def etags(value: str) -> tuple[str, ...]:
    """Opaque tags of If-None-Match (weak prefix dropped: §13.1.2 uses weak comparison), or '*'."""
    found: list[str] = []
    for match in _ETAG.finditer(value):
        found.append("*" if match.group(0) == "*" else match.group(2))
    return tuple(found)


def opaque_tag(etag: str | None) -> str | None:
    if not etag:
        return None
    found = etags(etag)
    return found[0] if found and found[0] != "*" else None


# The header maps the gateway passes: told by their type (one C call) instead of looking
# for a `getall` attribute (a bound method made, ~700 instructions, callgrind).
_MULTI_DICTS = frozenset({CIMultiDict, CIMultiDictProxy})


def field_values(headers: Mapping[str, str], name: str) -> list[str]:
    """All field lines of `name` (a CIMultiDict answers getall; a dict gives one)."""
    if type(headers) in _MULTI_DICTS:  # a new list each call (the default made here too)
        return headers.getall(name, [])  # type: ignore[attr-defined,no-any-return]
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [] if value is None else [value]
