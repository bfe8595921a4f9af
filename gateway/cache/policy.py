"""RFC 9111 for a shared cache, as pure functions of headers, times and the route's policy.

Nothing here does I/O or reads a clock: callers pass `now`, so every rule is testable without
a socket (tests/unit/test_cache_policy.py names each test after the section it checks). The
driver (gateway.cache.stage) asks these questions and performs the answers.

Choices the RFCs leave to us (also in the README):
- Targeted fields (RFC 9213) in the order Surrogate-Control, CDN-Cache-Control: the first valid,
  non-empty one replaces Cache-Control *and* Expires for this cache (RFC 9213 §2.1).
  CDN-Cache-Control must parse as an RFC 8941 Dictionary with the directive types RFC 9111
  gives (max-age an Integer...), else it is ignored whole; Surrogate-Control, older than
  Structured Fields, is read like Cache-Control.
- Any final status (200-599 but 206 and 304) with explicit freshness is stored (§3); a status
  this cache does not know (`UNDERSTOOD_STATUSES`) is not when the response says
  `must-understand` (§5.2.2.3), which otherwise lets an understood one be stored despite
  `no-store`.
- Route `ttl` and heuristic freshness apply only to heuristically cacheable status codes
  (RFC 9111 §4.2.2), so a `ttl` never makes a 500 or a 302 cacheable; `override: true` replaces
  only the lifetime, never `no-store`, `private` or `no-cache`.
- Heuristic lifetime: 10% of (Date - Last-Modified), at most one day (§4.2.2's suggestion).
- A response with no freshness and no validator is not stored: it could never be reused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urljoin, urlsplit

from multidict import CIMultiDict, istr

from gateway.cache.directives import (
    INVALID,
    Directives,
    age_value,
    etags,
    field_directives,
    field_values,
    http_date,
    opaque_tag,
    parse_surrogate_control,
    parse_targeted,
    vary_names,
)
from gateway.config.model import RouteCache

# §4.2.2 / RFC 9110 §15.1: status codes "heuristically cacheable" by default.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Never stored: 206 is part of a representation and 304 none at all (§3.3, §4.3.4).
INCOMPLETE_STATUSES = frozenset({206, 304})
# The final statuses RFC 9110 §15 defines, whose semantics this cache knows (§5.2.2.3's
# "understands"): a `must-understand` response with any other status is not stored.
UNDERSTOOD_STATUSES = frozenset(
    {*range(200, 206), *range(300, 306), 307, 308, *range(400, 418), 421, 422, 426,
     *range(500, 506)}) - INCOMPLETE_STATUSES
HEURISTIC_FRACTION = 0.1
HEURISTIC_MAX = 86400.0
# Fields of a 304 that must not replace the stored ones (§3.2: Content-Length describes the
# stored body, not the empty 304).
_KEEP_ON_FRESHEN = frozenset({"content-length", "content-encoding", "content-type",
                              "content-range", "transfer-encoding"})
# RFC 9110 §9.2.1: the methods known to be safe. Every other one, extensions such as M-SEARCH,
# PURGE or LINK included, invalidates on success (§4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
ERROR_STATUSES = frozenset({500, 502, 503, 504})  # RFC 5861 §4 "error": what stale-if-error covers


# Field names looked up on every request or answer the cache sees, as `istr`: a CIMultiDict
# looks one up without folding its case again (a third of what a `str` name costs,
# callgrind; plain dicts see the same string).
_SURROGATE_CONTROL = istr("Surrogate-Control")
_CDN_CACHE_CONTROL = istr("CDN-Cache-Control")
_CACHE_CONTROL = istr("Cache-Control")
_PRAGMA = istr("Pragma")
_AUTHORIZATION = istr("Authorization")
_SET_COOKIE = istr("Set-Cookie")
_VARY = istr("Vary")


# ---------------------------------------------------------------- which directives apply

def cache_directives(headers: Mapping[str, str]) -> tuple[Directives, bool]:
    """The directives that govern this cache, and whether they came from a targeted field."""
    # Each field looked for with `in` first: most responses carry neither targeted field,
    # and a membership test is one C call where collecting the lines is a few frames.
    if _SURROGATE_CONTROL in headers:
        parsed = parse_surrogate_control(field_values(headers, _SURROGATE_CONTROL))
        if parsed.valid and parsed.values:
            return parsed, True
    if _CDN_CACHE_CONTROL in headers:
        # An RFC 8941 Dictionary, or ignored whole (§2.1).
        cdn = parse_targeted(field_values(headers, _CDN_CACHE_CONTROL))
        if cdn is not None:
            return cdn, True
    return field_directives(headers, _CACHE_CONTROL), False


# ---------------------------------------------------------------- §3 storing

def not_storable_reason(method: str, status: int, headers: Mapping[str, str],
                        request_headers: Mapping[str, str], route: RouteCache) -> str | None:
    """None when the response may be stored (§3), else why not (for Cache-Status detail)."""
    if method != "GET":
        return "method"
    if not 200 <= status <= 599 or status in INCOMPLETE_STATUSES:
        return "status"  # §3: a final, complete response (RFC 9110 §15: 600+ is invalid)
    directives, targeted = cache_directives(headers)
    # The names in a dict: each test one C call, not a Directives.__contains__ frame.
    named = directives.values
    if _CACHE_CONTROL in request_headers and \
            "no-store" in field_directives(request_headers, _CACHE_CONTROL).values:
        return "no-store"
    if "must-understand" in named:
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
        # §5.2.2.3: a cache that understands the status ignores the response's no-store.
    elif "no-store" in named:
        return "no-store"
    if "private" in directives:  # §5.2.2.7: a shared cache never stores it, qualified or not
        return "private"
    # §3.5: a response to an authorized request only with must-revalidate, public or s-maxage.
    if _AUTHORIZATION in request_headers and not (
            "must-revalidate" in directives or "public" in directives
            or "s-maxage" in directives):
        return "authorization"
    if _SET_COOKIE in headers and not route.store_set_cookie:
        return "set-cookie"
    if vary_names(field_values(headers, _VARY)) is None:
        return "vary"  # `Vary: *` (or junk) can never match a later request (§4.1)
    explicit = _explicit_lifetime(headers, directives, targeted) is not None
    if not (explicit or status in HEURISTIC_STATUSES or "public" in directives):
        return "status"
    return None


# ---------------------------------------------------------------- §4.2 freshness

@dataclass(frozen=True, slots=True)
class Freshness:
    """What one stored response allows, computed once when it is stored."""

    lifetime: float
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    no_cache: bool = False  # every use needs validation (§5.2.2.4)

    def to_list(self) -> list[float]:
        return [self.lifetime, self.stale_while_revalidate, self.stale_if_error,
                1.0 if self.no_cache else 0.0]

    @classmethod
    def from_list(cls, values: list[float]) -> Freshness:
        return cls(values[0], values[1], values[2], bool(values[3]))

    @property
    def keep_for(self) -> float:
        """How long past its arrival a stored response can still be of use."""
        return self.lifetime + max(self.stale_while_revalidate, self.stale_if_error)


def _explicit_lifetime(headers: Mapping[str, str], directives: Directives,
                       targeted: bool) -> float | None:
    """§4.2.1 for a shared cache: s-maxage, then max-age, then Expires - Date."""
    for name in ("s-maxage", "max-age"):
        value = directives.seconds(name)
        if value is not None:
            return 0.0 if value == INVALID else float(value)  # invalid: stale (§4.2.1)
    if targeted:
        return None  # RFC 9213 §2.1: a targeted field also displaces Expires
    expires = field_values(headers, "Expires")
    if expires:
        if len(set(expires)) > 1:
            return 0.0  # two different Expires: consider it stale (§4.2.1)
        expires_at = http_date(expires[0])
        if expires_at is None:
            return 0.0  # §5.3: an invalid date, "0" included, is in the past
        date = http_date(headers.get("Date"))
        return max(0.0, expires_at - date) if date is not None else None
    return None


def freshness(status: int, headers: Mapping[str, str], route: RouteCache,
              response_time: float) -> Freshness:
    directives, targeted = cache_directives(headers)
    explicit = _explicit_lifetime(headers, directives, targeted)
    if explicit is None and "Expires" in headers and not targeted:
        # Expires without Date: measure from when we received it (§4.2.1 allows this).
        expires_at = http_date(headers.get("Expires"))
        explicit = max(0.0, expires_at - response_time) if expires_at is not None else 0.0
    lifetime: float
    if route.ttl is not None and status in HEURISTIC_STATUSES and (
            route.override or explicit is None):
        lifetime = route.ttl
    elif explicit is not None:
        lifetime = explicit
    else:
        lifetime = _heuristic(status, headers, directives, response_time)
    no_cache = "no-cache" in directives
    # RFC 5861 §4 and RFC 9111 §4.2.4: no stale use where the response forbids it; s-maxage
    # implies proxy-revalidate for a shared cache (§5.2.2.10).
    forbids_stale = no_cache or any(
        name in directives for name in ("must-revalidate", "proxy-revalidate", "s-maxage"))
    if forbids_stale:
        return Freshness(lifetime, 0.0, 0.0, no_cache)
    return Freshness(
        lifetime,
        _window(directives, "stale-while-revalidate", route.stale_while_revalidate),
        _window(directives, "stale-if-error", route.stale_if_error),
    )


def _window(directives: Directives, name: str, default: float) -> float:
    value = directives.seconds(name)
    if value is None:
        return default
    return 0.0 if value == INVALID else float(value)


def _heuristic(status: int, headers: Mapping[str, str], directives: Directives,
               response_time: float) -> float:
    if status not in HEURISTIC_STATUSES and "public" not in directives:
        return 0.0
    last_modified = http_date(headers.get("Last-Modified"))
    if last_modified is None:
        return 0.0
    date = http_date(headers.get("Date")) or response_time
    return min(HEURISTIC_MAX, max(0.0, (date - last_modified) * HEURISTIC_FRACTION))


def has_validator(headers: Mapping[str, str]) -> bool:
    return "ETag" in headers or "Last-Modified" in headers


def worth_storing(fresh: Freshness, headers: Mapping[str, str]) -> bool:
    return (fresh.lifetime > 0 and not fresh.no_cache) or has_validator(headers)


# ---------------------------------------------------------------- §4.2.3 age

def initial_age(headers: Mapping[str, str], request_time: float, response_time: float) -> float:
    """corrected_initial_age of §4.2.3, from Age, Date and the exchange's own timing."""
    date = http_date(headers.get("Date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value(field_values(headers, "Age")) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(corrected_initial_age: float, response_time: float, now: float) -> float:
    return corrected_initial_age + max(0.0, now - response_time)


# ---------------------------------------------------------------- §4 reuse

class Use(Enum):
    FRESH = "fresh"                        # serve it
    STALE_WHILE_REVALIDATE = "swr"         # serve it, refresh in the background (RFC 5861 §3)
    REVALIDATE = "revalidate"              # ask the upstream first (§4.3)


def evaluate(fresh: Freshness, age: float, request_headers: Mapping[str, str]) -> Use:
    if _CACHE_CONTROL not in request_headers and _PRAGMA not in request_headers:
        # The usual request asks nothing of the cache: only the stored response's rules apply
        # (the same answers as below with no request directives, without parsing any).
        if fresh.no_cache:
            return Use.REVALIDATE
        if age < fresh.lifetime:
            return Use.FRESH
        if age < fresh.lifetime + fresh.stale_while_revalidate:
            return Use.STALE_WHILE_REVALIDATE
        return Use.REVALIDATE
    request_cc = field_directives(request_headers, _CACHE_CONTROL)
    if fresh.no_cache or "no-cache" in request_cc or (
            not request_cc.values and "no-cache" in request_headers.get("Pragma", "")):
        return Use.REVALIDATE  # §5.2.2.4, §5.2.1.4 and §5.4 (Pragma only without Cache-Control)
    max_age = request_cc.seconds("max-age")
    if max_age is not None and (max_age == INVALID or age > max_age):
        return Use.REVALIDATE  # §5.2.1.1: the client will not accept anything older
    if age < fresh.lifetime:
        return Use.FRESH
    if age < fresh.lifetime + fresh.stale_while_revalidate:
        return Use.STALE_WHILE_REVALIDATE
    return Use.REVALIDATE


def forward_reason(fresh: Freshness, age: float) -> str:
    """RFC 9211 §2.2 `fwd` when a stored response was not used as it is: `stale` when its own
    rules ask for validation, `request` when only the request's directives did (no-cache,
    max-age, Pragma: no-cache in front of a response that was still usable)."""
    return "stale" if evaluate(fresh, age, _NO_FIELDS) is Use.REVALIDATE else "request"


_NO_FIELDS: Mapping[str, str] = {}


def stale_if_error_allows(fresh: Freshness, age: float) -> bool:
    """RFC 5861 §4: within the window after it became stale, an error may be answered with it."""
    return age < fresh.lifetime + fresh.stale_if_error


# ---------------------------------------------------------------- §4.3 validation

def conditional_headers(stored: Mapping[str, str]) -> list[tuple[str, str]]:
    """§4.3.1: the stored validators, to ask the upstream whether the entry is still good."""
    found: list[tuple[str, str]] = []
    if "ETag" in stored:
        found.append(("If-None-Match", stored["ETag"]))
    if "Last-Modified" in stored:
        found.append(("If-Modified-Since", stored["Last-Modified"]))
    return found


CLIENT_CONDITIONALS = (istr("If-None-Match"), istr("If-Modified-Since"))
# With these the client asks for something other than the stored whole: pass it upstream.
BYPASS_REQUEST_FIELDS = (istr("If-Match"), istr("If-Unmodified-Since"))
# A request for part of the stored whole (RFC 9110 §14.2, §13.1.5): answered from a stored
# 200 by `requested_range`, never sent upstream to fill the cache.
RANGE_FIELDS = (istr("Range"), istr("If-Range"))
# What keeps a stored answer from being the stored head as it is (conditionals, a range).
NOT_PLAIN = (*CLIENT_CONDITIONALS, RANGE_FIELDS[0])


def not_modified(request_headers: Mapping[str, str], stored: Mapping[str, str]) -> bool:
    """§4.3.2: may the cache answer the client's conditional GET with 304?"""
    if_none_match = request_headers.get("If-None-Match")
    if if_none_match is not None:  # RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since
        tags = etags(if_none_match)
        mine = opaque_tag(stored.get("ETag"))
        return "*" in tags or (mine is not None and mine in tags)
    since_field = request_headers.get("If-Modified-Since")
    if since_field is None:
        return False  # not a conditional request: the usual case, no date to parse
    since = http_date(since_field)
    if since is None:
        return False
    modified = http_date(stored.get("Last-Modified")) or http_date(stored.get("Date"))
    return modified is not None and modified <= since


def freshen(stored: Iterable[tuple[str, str]], update: Mapping[str, str],
            store_set_cookie: bool = False) -> list[tuple[str, str]]:
    """§4.3.4: the 304's fields replace the stored ones of the same name, except the content
    fields that describe the stored body, and Set-Cookie unless the route stores it (one
    user's cookie in a 304 must not reach the next user the entry answers)."""
    keep = _KEEP_ON_FRESHEN if store_set_cookie else _KEEP_ON_FRESHEN | {"set-cookie"}
    replacing = {name.lower() for name in update if name.lower() not in keep}
    kept = [(n, v) for n, v in stored if n.lower() not in replacing]
    added = [(n, v) for n, v in update.items() if n.lower() in replacing]
    return kept + added


_NOT_MODIFIED_DROP = frozenset({"content-length", "content-type", "content-encoding",
                                "content-range", "content-language"})


def not_modified_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """RFC 9110 §15.4.5: a 304 carries the metadata a 200 would, not the content fields."""
    return [(n, v) for n, v in headers if n.lower() not in _NOT_MODIFIED_DROP]


# ---------------------------------------------------------------- RFC 9110 §14 ranges

@dataclass(frozen=True, slots=True)
class ByteRange:
    """One satisfiable byte range of a representation `length` bytes long, `last` included."""

    first: int
    last: int
    length: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.length}"  # RFC 9110 §14.4


@dataclass(frozen=True, slots=True)
class NotSatisfiable:
    """No range of the request overlaps the representation: 416 (RFC 9110 §15.5.17)."""

    length: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.length}"  # RFC 9110 §14.4: unsatisfied-range


_DIGITS = frozenset("0123456789")


def _position(text: str) -> int | None:
    """1*DIGIT (RFC 9110 §14.1.2), else None. Past 18 digits it is more bytes than any
    representation here has: counted as 2**63 rather than converted (int() of a long digit
    string costs time quadratic in its length)."""
    text = text.strip(" \t")
    if not text or not _DIGITS.issuperset(text):
        return None
    return int(text) if len(text) <= 18 else 2**63


def byte_range(value: str, length: int) -> ByteRange | NotSatisfiable | None:
    """What a `Range` field value asks of a representation of `length` bytes (RFC 9110
    §14.1.2, §14.2): one ByteRange, NotSatisfiable (416), or None for the whole (200).

    None when the value is not a valid `bytes` range set (§14.2: then the field is ignored),
    when it holds more than one range and any is satisfiable (§14.2 lets a server ignore
    Range; this cache does not build multipart/byteranges), and for an empty
    representation, which has no byte to give.
    """
    unit, equals, ranges = value.partition("=")
    if not equals or unit.strip(" \t").lower() != "bytes" or length <= 0:
        return None
    found: list[ByteRange | NotSatisfiable] = []
    for spec in ranges.split(","):
        if not spec.strip(" \t"):
            continue  # RFC 9110 §5.6.1: empty list elements are allowed and ignored
        first_text, dash, last_text = spec.partition("-")
        if not dash:
            return None
        if not first_text.strip(" \t"):  # suffix-range: the last N bytes
            suffix = _position(last_text)
            if suffix is None:
                return None
            found.append(ByteRange(max(0, length - suffix), length - 1, length) if suffix
                         else NotSatisfiable(length))
            continue
        first = _position(first_text)
        last = _position(last_text) if last_text.strip(" \t") else 2**63  # open: to the end
        if first is None or last is None or last < first:
            return None  # §14.1.2: an int-range with last-pos < first-pos is invalid
        found.append(ByteRange(first, min(last, length - 1), length) if first < length
                     else NotSatisfiable(length))
    satisfiable = [r for r in found if isinstance(r, ByteRange)]
    if not found:
        return None
    if not satisfiable:
        return NotSatisfiable(length)
    return satisfiable[0] if len(found) == 1 else None


def if_range_holds(value: str | None, stored: Mapping[str, str]) -> bool:
    """RFC 9110 §13.1.5: may the range be served, given the request's If-Range (None: no
    If-Range)? An entity-tag must match the stored ETag by strong comparison (§8.8.3.2:
    neither weak); a date must be the stored Last-Modified exactly, and that one strong:
    at least a second before the stored Date (§8.8.2.2, as an intermediate cache sees it)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        etag = (stored.get("ETag") or "").strip()
        return value.startswith('"') and etag == value and len(value) >= 2
    modified_field = stored.get("Last-Modified")
    if modified_field is None or value != modified_field.strip():
        return False
    modified = http_date(modified_field)
    date = http_date(stored.get("Date"))
    return modified is not None and date is not None and date - modified >= 1


def requested_range(method: str, request_headers: Mapping[str, str], status: int,
                    stored: Mapping[str, str], length: int) -> ByteRange | NotSatisfiable | None:
    """The part of a stored response a request asks for; None for the whole: no Range, a
    method other than GET (§14.2: the only one ranges are defined for), a stored status
    other than 200, an If-Range that does not hold (§13.1.5), or a Range `byte_range`
    answers whole. A request with several Range fields is invalid: answered whole."""
    values = field_values(request_headers, "Range")
    if len(values) != 1 or method != "GET" or status != 200:
        return None
    if_range = field_values(request_headers, "If-Range")
    if len(if_range) > 1 or not if_range_holds(if_range[0] if if_range else None, stored):
        return None
    return byte_range(values[0], length)


# ---------------------------------------------------------------- §4.4 invalidation

def invalidated_urls(method: str, status: int, request_url: str,
                     headers: Mapping[str, str]) -> list[str]:
    """The URLs a successful unsafe request makes stale: its target and same-origin
    Location / Content-Location (§4.4; other origins are ignored to stop cache poisoning).
    Every method not known to be safe counts, whatever its name."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    urls = [request_url]
    origin = _origin(request_url)
    for name in ("Location", "Content-Location"):
        value = headers.get(name)
        if value:
            target = urljoin(request_url, value.strip())
            if _origin(target) == origin and target not in urls:
                urls.append(target)
    return urls


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


# ---------------------------------------------------------------- what the client receives

def client_headers(headers: Iterable[tuple[str, str]], route: RouteCache, *,
                   stored: bool, age: float | None = None) -> CIMultiDict[str]:
    """Headers for the client: Surrogate-Control and the tags header removed (contract), Age
    on a response from the cache, and `browser_ttl` as the client's Cache-Control.
    CDN-Cache-Control is sent on: a CDN tier in front may use it, browsers ignore it (RFC 9213).

    With `browser_ttl` the client gets max-age = browser_ttl + Age: a browser subtracts Age
    (§4.2.3), so this keeps it browser_ttl seconds from the moment it arrives.
    """
    drop = dropped_fields(route, stored=stored, age=age is not None)
    rewrite = stored and route.browser_ttl is not None
    result: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        if name.lower() not in drop:
            result.add(name, value)
    if age is not None:
        result["Age"] = str(int(age))
    if rewrite:
        assert route.browser_ttl is not None
        result["Cache-Control"] = f"max-age={int(route.browser_ttl + (age or 0))}"
    return result


def dropped_fields(route: RouteCache, *, stored: bool, age: bool) -> frozenset[str]:
    """The lower-cased fields `client_headers` leaves out (it adds Age / Cache-Control anew)."""
    drop = {"surrogate-control"}
    if route.tags_header:
        drop.add(route.tags_header.lower())
    if age:
        drop.add("age")
    if stored and route.browser_ttl is not None:
        drop.add("cache-control")
    return frozenset(drop)


@functools.lru_cache(maxsize=1024)  # a few members repeat: "gateway; fwd=miss; ..."
def cache_status(*, hit: bool, ttl: float | None = None, fwd: str | None = None,
                 fwd_status: int | None = None, stored: bool = False,
                 detail: str | None = None) -> str:
    """An RFC 9211 Cache-Status member for this cache, named `gateway`."""
    parts = ["gateway"]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        parts.append(f"ttl={int(ttl)}")
    if stored:
        parts.append("stored")
    if detail is not None:
        parts.append(f'detail="{detail}"' if not detail.replace("-", "").isalnum()
                     else f"detail={detail}")
    return "; ".join(parts)


@functools.lru_cache(maxsize=1024)
def unstored_status(fwd: str, fwd_status: int, detail: str) -> str:
    """`cache_status(hit=False, fwd=fwd, fwd_status=fwd_status, detail=detail)`, the member
    of an answer passed on unstored, cached by its positional arguments: the cache key of
    a call by keywords cost ~2,000 instructions more (callgrind)."""
    return cache_status(hit=False, fwd=fwd, fwd_status=fwd_status, detail=detail)


def hit_status(ttl: float) -> str:
    """`cache_status(hit=True, ttl=ttl)`, the member every fresh hit sends, in one format."""
    return f"gateway; hit; ttl={int(ttl)}"


def tags_of(headers: Mapping[str, str], route: RouteCache) -> tuple[str, ...]:
    """Purge tags from the route's tags header (space or comma separated, as Surrogate-Key)."""
    if not route.tags_header:
        return ()
    found: list[str] = []
    for value in field_values(headers, route.tags_header):
        for tag in value.replace(",", " ").split():
            if tag not in found:
                found.append(tag)
    return tuple(found)
