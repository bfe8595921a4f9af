"""The request target, made canonical once, before anything reads it (pure).

Routing, `strip_prefix`, the cache key, the access log and the upstream request all read the
one `Target` this module returns, so no two of them can disagree on what was asked for: a
path that the router saw as `/x/../auth` while the upstream resolved it to `/auth` is how a
route's limits were walked around.

The path is normalised as RFC 3986 §6.2.2 says, and refused (`BadTarget`, a 400) where it
cannot be made safe:
- percent-encoding: an escape of an unreserved character is decoded (§6.2.2.2), every other
  escape is upper-cased (§6.2.2.1); `%zz` or a lone `%` is refused, and so is `%00`, which
  a C string ends at;
- `%2F` and `%5C` stay encoded and never separate segments (or are refused: `escaped_slashes:
  reject`), since an upstream that decodes them would see another path than the router;
- repeated slashes are merged (`merge_slashes`, as nginx), then dot segments removed (§5.2.4,
  §6.2.2.3); a `..` that would climb above the root is refused instead of clamped, since
  no client of ours has a reason to send one, and so is a dot segment with parameters
  (`..;x`), which servlet containers resolve as `..`;
- a control byte, a space or a `#` is refused (RFC 9112 §3.2: none belongs in a target);
  a character outside the URI grammar (a raw non-ASCII byte, `"`, `<`, `\\`, ...) is
  percent-encoded as UTF-8, as browsers do, so a raw backslash is the encoded one above.

The query is kept as it came (only refused for the same control bytes and `#`); the
cache key sorts it and drops `ignore_query` names, and `without_params` drops those for the
upstream too.

Absolute-form (`GET http://host/path`, RFC 9112 §3.2.2) gives the authority, which replaces
Host; the upstream then gets origin-form. Its scheme must be http or https, but it is not
believed: what the connection is (TLS or not) stays the request's scheme.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["DEFAULT_RULES", "BadTarget", "Target", "TargetReader", "TargetRules",
           "canonical_path", "parse_target", "without_params"]


class BadTarget(ValueError):
    """A request target that cannot be made canonical: the answer is 400 with this text."""


class TargetRules(NamedTuple):
    """The listen settings that shape canonical paths, read once per config."""

    merge_slashes: bool = True
    reject_escaped_slashes: bool = False


DEFAULT_RULES = TargetRules()  # the listen defaults: merge slashes, keep escaped ones


class Target(NamedTuple):
    """The one request target every stage reads.

    `path` is canonical; `qs` is "" or "?" with the query as received; `authority` is the
    lower-cased host[:port] (from absolute-form, else the one Host field; "" for an
    HTTP/1.0 request without Host); `absolute` says the target came in absolute-form, so
    the upstream's Host must be `authority`.
    """

    path: str
    qs: str
    authority: str
    absolute: bool = False

    @property
    def path_qs(self) -> str:
        return self.path + self.qs


_UNRESERVED = "A-Za-z0-9\\-._~"
_SUB_DELIMS = "!$&'()*+,;="
_PCHAR = _UNRESERVED + _SUB_DELIMS + ":@"  # RFC 3986 §3.3, without pct-encoded
# A target that is canonical already: a "/"-led path of pchars and slashes, no escape at
# all, then an optional query of URI characters (RFC 3986 §3.3, §3.4); with no "//" and no
# "/." (so no empty and no dot segment) anywhere. Nearly every request is one, and then
# this match and two substring tests are all the work on the path: 0.3 us together, where
# a single regex that also excluded the dot segments took 0.3 us alone (timeit).
_PLAIN = re.compile(rf"/[{_PCHAR}/]*(?:\?[{_PCHAR}/?%]*)?")
_AUTHORITY = re.compile(  # RFC 3986 §3.2.2-3: IP-literal or reg-name / IPv4, then a port
    rf"(?:\[[0-9A-Fa-f:.]+\]|[{_UNRESERVED}{_SUB_DELIMS}%]+)(?::[0-9]{{1,5}})?")
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f#]")
_OUTSIDE_URI = re.compile(rf"[^{_PCHAR}/%]")  # what gets percent-encoded in a path
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})?")
_UNRESERVED_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                              b"0123456789-._~")
_SLASHES = ("%2F", "%5C")
# "..;x" is a plain segment to RFC 3986, but Tomcat and other servlet containers strip the
# ";x" path parameter first and then resolve "..": "/public/..;/admin" is "/admin" there.
_DOT_PARAMETERS = (".;", "..;")
# Host field values seen valid, lower-cased: a gateway sees a handful of them, and a dict
# hit costs a tenth of the regex (0.02 against 0.2 us). Emptied whole when full.
_HOSTS: dict[str, str] = {}
_HOSTS_MAX = 1024
_new = tuple.__new__  # a Target without NamedTuple's keyword handling (0.12 against 0.2 us)


def _describe(char: str) -> str:
    return "'#' (a fragment)" if char == "#" else f"the byte 0x{ord(char):02X}"


def _encode_outside(match: re.Match[str]) -> str:
    data = match.group(0).encode("utf-8", "surrogateescape")
    return "".join(f"%{byte:02X}" for byte in data)


def _normal_escape(match: re.Match[str], reject_slashes: bool) -> str:
    digits = match.group(1)
    if digits is None:
        raise BadTarget("the path holds a '%' that is not followed by two hex digits")
    value = int(digits, 16)
    if value == 0:
        raise BadTarget("the path holds an encoded NUL (%00)")
    if value in _UNRESERVED_BYTES:
        return chr(value)  # RFC 3986 §6.2.2.2
    escape = "%" + digits.upper()  # RFC 3986 §6.2.2.1
    if reject_slashes and escape in _SLASHES:
        raise BadTarget(f"the path holds an encoded slash or backslash ({escape}), "
                        "which this gateway refuses (listen.escaped_slashes: reject)")
    return escape


def _remove_dot_segments(segments: list[str], merge_slashes: bool) -> str:
    """RFC 3986 §5.2.4 over the segments after the leading "/"; refuses a climb above
    the root. With `merge_slashes`, empty segments go first (nginx merges while it
    parses, so "/a//../b" is "/b" there too)."""
    kept: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "." or segment == "..":
            if segment == "..":
                if not kept:
                    raise BadTarget("the path climbs above the root with '..'")
                kept.pop()
            if index == last:
                kept.append("")  # "/a/b/.." is "/a/", a directory
            continue
        if not segment and merge_slashes and index != last:
            continue
        if segment.startswith(_DOT_PARAMETERS):
            raise BadTarget(f"the path holds a dot segment with parameters ({segment[:20]!r}), "
                            "which servlet containers resolve as '.' or '..'")
        kept.append(segment)
    return "/" + "/".join(kept)


def canonical_path(path: str, rules: TargetRules = DEFAULT_RULES) -> str:
    """The canonical form of an absolute path (starting with "/"), or BadTarget."""
    forbidden = _FORBIDDEN.search(path)
    if forbidden is not None:
        raise BadTarget(f"the path holds {_describe(forbidden.group(0))}")
    if not path.startswith("/"):
        raise BadTarget("the path must start with '/'")
    path = _OUTSIDE_URI.sub(_encode_outside, path)
    if "%" in path:
        reject = rules.reject_escaped_slashes
        path = _ESCAPE.sub(lambda m: _normal_escape(m, reject), path)
    return _remove_dot_segments(path.split("/")[1:], rules.merge_slashes)


def _authority(text: str, where: str) -> str:
    if not _AUTHORITY.fullmatch(text):
        raise BadTarget(f"{where} is not a valid host[:port]: {text[:100]!r}")
    return text.lower()  # RFC 3986 §6.2.2.1: the host is case-insensitive


def _known_host(text: str) -> str:
    known = _HOSTS.get(text)
    if known is None:
        known = _authority(text, "the Host field")
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        _HOSTS[text] = known
    return known


def _host_field(hosts: Sequence[str], http11: bool) -> str:
    """The authority from the Host field: exactly one on HTTP/1.1 (RFC 9112 §3.2)."""
    if len(hosts) > 1:
        raise BadTarget("the request has more than one Host field")
    if not hosts:
        if http11:
            raise BadTarget("an HTTP/1.1 request needs a Host field")
        return ""
    return _known_host(hosts[0])


def parse_target(raw: str, hosts: Sequence[str], http11: bool = True,
                 rules: TargetRules = DEFAULT_RULES) -> Target:
    """The canonical target of a request line's `raw` target and its Host field values.

    Origin-form and absolute-form only: asterisk-form (`OPTIONS *`) and authority-form
    (`CONNECT`) are nothing a reverse proxy of routes serves.
    """
    if _PLAIN.fullmatch(raw) is not None and "//" not in raw and "/." not in raw and \
            len(hosts) == 1 and (known := _HOSTS.get(hosts[0])) is not None:
        path, question, query = raw.partition("?")
        return _new(Target, (path, question + query, known, False))
    absolute = raw[:1] != "/" and _ABSOLUTE.fullmatch(raw)
    if absolute:
        scheme, authority, rest = absolute.groups()
        if scheme.lower() not in ("http", "https"):
            raise BadTarget(f"absolute-form targets must be http or https, not {scheme!r}")
        if "@" in authority:  # RFC 9110 §4.2.4: userinfo is not for http(s) URIs
            raise BadTarget("the target's authority holds userinfo ('@')")
        authority = _authority(authority, "the target's authority")
        if rest[:1] not in ("", "/", "?"):
            raise BadTarget("the target's authority is followed by neither '/' nor '?'")
        if rest[:1] != "/":
            rest = "/" + rest  # RFC 9112 §3.2.1: an empty path is "/"
    elif raw[:1] == "/":
        authority, rest = _host_field(hosts, http11), raw
    else:
        raise BadTarget("the request target must be an absolute path or an absolute "
                        "http(s) URI")
    path, question, query = rest.partition("?")
    forbidden = _FORBIDDEN.search(query)
    if forbidden is not None:
        raise BadTarget(f"the query holds {_describe(forbidden.group(0))}")
    return Target(canonical_path(path, rules), question + query, authority, bool(absolute))


def without_params(qs: str, names: frozenset[str]) -> str:
    """`qs` ("" or "?query") without the parameters named in `names`, compared as the cache
    key compares them (the name before "=", as sent): what the key leaves out must not
    reach the upstream either. The rest keep their order; nothing left, no "?"."""
    if not qs or not names:
        return qs
    kept = [pair for pair in qs[1:].split("&") if pair.partition("=")[0] not in names]
    return "?" + "&".join(kept) if any(kept) else ""


class TargetReader:
    """`parse_target` under one listener's rules, remembering recent answers.

    Under callgrind the fast path of parse_target is ~6,400 instructions (the regex match
    alone ~2,400) and a remembered answer ~1,600; a route's clients ask for the same few
    targets most of the time. Only targets of at most MEMO_TARGET bytes with one Host are
    kept, at most MEMO_MAX of them (emptied whole when full), so a scan of distinct or long
    targets costs one dict insert each and bounded memory: the target, its path and query
    and two tuples are ~1.3 KB an entry at most (tracemalloc), ~5.5 MB in all. Refused
    targets are never kept.
    """

    MEMO_MAX = 4096
    MEMO_TARGET = 512

    __slots__ = ("_memo", "rules")

    def __init__(self, rules: TargetRules = DEFAULT_RULES) -> None:
        self.rules = rules
        self._memo: dict[tuple[str, str], Target] = {}

    def read(self, raw: str, hosts: Sequence[str], http11: bool = True) -> Target:
        if len(hosts) != 1 or len(raw) > self.MEMO_TARGET:
            return parse_target(raw, hosts, http11, self.rules)
        key = (raw, hosts[0])
        target = self._memo.get(key)
        if target is None:
            target = parse_target(raw, hosts, http11, self.rules)
            if len(self._memo) >= self.MEMO_MAX:
                self._memo.clear()
            self._memo[key] = target
        return target
