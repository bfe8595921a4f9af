"""Cache keys (RFC 9111 §2, §4.1), pure.

The primary key is the target URI, method-independent (HEAD is answered from a stored GET):
scheme and host lower-cased, default port dropped, path as sent, and the query with the route's
`ignore_query` parameters removed and the rest sorted stably by name (so `?b=1&a=2` and
`?a=2&b=1` share an entry, while repeated names keep their relative order).

A URL may have several variants: the secondary key is the request's values of the fields the
response's Vary names, normalised as far as RFC 9110 makes values equivalent (§4.1 allows it),
so equivalent requests share a variant:
- every field: its lines joined with ", ", whitespace around commas and runs of spaces
  collapsed (`gzip,br` and `gzip, br`; §5.3, §5.6.1);
- the content negotiation fields Accept, Accept-Charset, Accept-Encoding, Accept-Language
  (§12.5), lists whose order means nothing (preference is in q-values): empty members dropped,
  codings, charsets, language tags, media ranges and parameter names lower-cased (all
  case-insensitive: §8.4.1, §8.3.1, RFC 5646 §2.1.1, §8.3.1), parameter values kept, members
  sorted (`br, GZIP` and `gzip,br`). A value with a quoted string is only space-normalised: a
  comma inside quotes is not a list separator.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from gateway.cache.directives import field_values
from gateway.context import remember

_SPACES = re.compile(r"\s*,\s*|\s+")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def url_key(url: str, ignore_query: frozenset[str] = frozenset()) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path_qs = rest.partition("/")
    authority = authority.lower()
    host, colon, port = authority.rpartition(":")
    if colon and _DEFAULT_PORTS.get(scheme.lower()) == port and "]" not in port:
        authority = host
    path, question, query = path_qs.partition("?")
    path = "/" + path if slash else "/"
    if question and query:
        query = _normal_query(query, ignore_query)
    return f"{scheme.lower()}://{authority}{path}{'?' + query if query else ''}"


def _normal_query(query: str, ignore: frozenset[str]) -> str:
    pairs = [p for p in query.split("&") if p]
    if ignore:
        pairs = [p for p in pairs if p.partition("=")[0] not in ignore]
    pairs.sort(key=lambda p: p.partition("=")[0])  # stable: same-name order kept
    return "&".join(pairs)


def normalise(value: str) -> str:
    return _SPACES.sub(lambda m: "," if "," in m.group(0) else " ", value.strip())


UNORDERED_FIELDS = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language"})
# (field, value) -> its normal form. Clients repeat the same few values, so a Vary lookup
# costs a dict probe (0.25 us) instead of a normalisation (3.5 us for a four-coding
# Accept-Encoding); values past _MEMO_VALUE characters are not kept, bounding the memory.
_NORMALISED: dict[tuple[str, str], str] = {}
_MEMO_ENTRIES = 1024
_MEMO_VALUE = 256


def normalise_field(name: str, value: str) -> str:
    """`value` of the lower-cased field `name` in its normal form (module docstring)."""
    found = _NORMALISED.get((name, value))
    if found is not None:
        return found
    if name in UNORDERED_FIELDS and '"' not in value:
        members = (_member(m) for m in value.split(","))
        found = ",".join(sorted(m for m in members if m))
    else:
        found = normalise(value)
    if len(value) <= _MEMO_VALUE:
        remember(_NORMALISED, (name, value), found, _MEMO_ENTRIES)
    return found


def _member(text: str) -> str:
    """One member of a negotiation field: `range *( ";" name=value )`, case folded where
    RFC 9110 says case does not matter."""
    first, *parameters = text.split(";")
    parts = [" ".join(first.split()).lower()]
    for parameter in parameters:
        name, equals, value = parameter.partition("=")
        parts.append(f"{name.strip().lower()}{equals}{value.strip()}")
    return ";".join(parts) if parts[0] else ""


def vary_values(names: tuple[str, ...], request_headers: Mapping[str, str]
                ) -> tuple[str | None, ...]:
    """The request's value for each Vary name; None marks a field the request lacks (§4.1)."""
    values: list[str | None] = []
    for name in names:
        lines = field_values(request_headers, name)
        values.append(normalise_field(name, ", ".join(lines)) if lines else None)
    return tuple(values)


def variant_id(names: tuple[str, ...], values: tuple[str | None, ...]) -> str:
    """A short stable id for one variant of a URL."""
    if not names:
        return "-"
    text = "\x00".join(f"{n}\x01{'' if v is None else '=' + v}"
                        for n, v in zip(names, values, strict=True))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def url_hash(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
