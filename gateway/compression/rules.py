"""What to send a client, as pure functions: the content coding it gets (RFC 9110 §12.5.3),
whether a response may be compressed at all, and the validators of each coding (§8.8.3).

No I/O and no codec here: gateway.compression.stage asks these and does the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.cache.directives import field_values
from gateway.config.model import Compression, Encoding

IDENTITY = "identity"
# RFC 9110 §8.4.1.3: a recipient treats x-gzip as gzip.
_ALIASES = {"x-gzip": "gzip"}
# Statuses whose answer carries no content (§15.3.5, §15.4.5) or only part of it (§15.3.7,
# a range of the identity bytes: compressing it would change what the range means).
NO_CONTENT = frozenset({204, 206, 304})
# Request fields that carry ambient credentials: a body answering such a request may hold a
# secret beside what an attacker put in the URL (BREACH, README "Compression").
SECRET_REQUEST_FIELDS = ("Cookie", "Authorization")


@dataclass(frozen=True, slots=True)
class Preferences:
    """An Accept-Encoding field read once: the q-value of each coding it names."""

    named: dict[str, float]      # lower-cased coding -> q
    star: float | None           # the q of "*", if listed
    present: bool = True         # False: the request had no Accept-Encoding at all

    def q(self, coding: str) -> float:
        """§12.5.3: a listed coding has its q; one not listed gets "*"'s, else 0; identity
        is acceptable unless excluded (identity;q=0, or *;q=0 without identity listed)."""
        if coding in self.named:
            return self.named[coding]
        if self.star is not None:
            return self.star
        return 1.0 if coding == IDENTITY else 0.0


NO_FIELD = Preferences({}, None, present=False)


def _qvalue(text: str) -> float | None:
    """§12.4.2 qvalue: 0 to 1 with up to three decimals; None when malformed."""
    text = text.strip()
    if not text or len(text) > 5 or text[0] not in "01":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def preferences(accept_encoding: str | None) -> Preferences:
    """The client's codings and their weights; a member with a malformed q is ignored
    (one bad member does not spoil the field)."""
    if accept_encoding is None:
        return NO_FIELD
    named: dict[str, float] = {}
    star: float | None = None
    for member in accept_encoding.split(","):
        coding, _, params = member.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q: float | None = 1.0
        for param in params.split(";") if params else ():
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                q = _qvalue(value)
        if q is None:
            continue
        coding = _ALIASES.get(coding, coding)
        if coding == "*":
            star = q
        else:
            named[coding] = max(q, named.get(coding, 0.0))
    return Preferences(named, star)


def choose(prefs: Preferences, offered: tuple[Encoding, ...]) -> Encoding | None:
    """The coding to send, None for identity.

    Without Accept-Encoding the client gets identity: §12.5.3 allows any coding then, but
    clients that send no field (curl, health checkers, old libraries) are the ones that
    cannot decode. The highest q wins; ties go to the order of `compression.encodings`, and
    a coding beats identity at equal q (compressing is why the route has it on). When
    nothing is acceptable, identity;q=0 included, the answer is identity all the same:
    §12.5.3 says to send the representation without a content coding rather than refuse,
    and a 406 for a readable body helps nobody (README, "Compression").
    """
    if not prefs.present or (not prefs.named and prefs.star is None):
        return None
    best: Encoding | None = None
    best_q = 0.0
    for coding in offered:
        q = prefs.q(coding)
        if q > best_q:
            best, best_q = coding, q
    # Identity competes with the weight the client gave it; unlisted, it is only the
    # fallback (acceptable, but not preferred over a listed coding).
    identity_q = prefs.named.get(IDENTITY, prefs.star if prefs.star is not None else 0.0)
    if best is None or identity_q > best_q:
        return None
    return best


def accepts(prefs: Preferences, coding: str) -> bool:
    """Whether the client may get a body in `coding` (as an upstream sent it)."""
    coding = _ALIASES.get(coding, coding)
    if coding == IDENTITY:
        return True  # §12.5.3: identity is what is sent when nothing else is acceptable
    return prefs.present and prefs.q(coding) > 0


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def type_listed(content_type: str | None, ranges: tuple[str, ...]) -> bool:
    """Whether the media type falls in one of the configured ranges ("text/*", exact)."""
    if not content_type:
        return False
    kind = media_type(content_type)
    top = kind.partition("/")[0]
    for listed in ranges:  # noqa: SIM110 - no generator per response
        if listed == kind or (listed.endswith("/*") and listed[:-2] == top):
            return True
    return False


def skip_reason(status: int, response: Mapping[str, str], request: Mapping[str, str],
                settings: Compression, secrets_allowed: bool, length: int | None
                ) -> str | None:
    """Why this response must go out as it is (None: it may be compressed).

    `length` is the body's size when known (for a HEAD, the size the upstream or the cache
    names); a body of unknown length is compressed (it is usually large: a stream).
    Already-encoded bodies are handled by the caller (decoded for a client that cannot read
    them, else passed on). The method plays no part: a HEAD answer gets the decision its
    GET would (RFC 9110 §9.3.2), and the stage sends its fields without coding anything.
    """
    if status in NO_CONTENT or status < 200:
        return "status"
    if "Content-Encoding" in response and \
            response["Content-Encoding"].strip().lower() not in ("", IDENTITY):
        return "encoded"
    if "Content-Range" in response:
        return "status"
    if not type_listed(response.get("Content-Type"), settings.types):
        return "type"
    if length is not None and length < settings.min_size:
        return "small"
    if no_transform(response):
        return "no-transform"
    if not secrets_allowed:
        if "Set-Cookie" in response:
            return "set-cookie"
        for name in SECRET_REQUEST_FIELDS:
            if name in request:
                return "credentials"
    return None


def no_transform(response: Mapping[str, str]) -> bool:
    """RFC 9111 §5.2.2.6: an intermediary must not change the content (nor its coding)."""
    for value in field_values(response, "Cache-Control"):
        for directive in value.split(","):
            if directive.strip().lower() == "no-transform":
                return True
    return False


def upstream_coding(response: Mapping[str, str]) -> str | None:
    """The single content coding an upstream applied (None: identity). A list of codings is
    returned as it is written, so nobody mistakes it for one they could undo."""
    value = response.get("Content-Encoding")
    if value is None:
        return None
    coding = value.strip().lower()
    if coding in ("", IDENTITY):
        return None
    return _ALIASES.get(coding, coding)


def decodable(coding: str) -> Encoding | None:
    try:
        return Encoding(coding)
    except ValueError:
        return None


# ---------------------------------------------------------------- validators (§8.8.3)

def coded_etag(etag: str, coding: str) -> str:
    """A strong entity tag made distinct per coding (`"v1"` -> `"v1-br"`): the bytes differ,
    so §8.8.1 needs a different strong validator. A weak tag stays: weak comparison holds
    across codings of the same content (§8.8.3.2)."""
    etag = etag.strip()
    if etag.startswith('"') and etag.endswith('"') and len(etag) >= 2:
        return f'{etag[:-1]}-{coding}"'
    return etag


def split_coded(tag: str, codings: tuple[str, ...]) -> tuple[str, str | None]:
    """`"v1-br"` -> (`"v1"`, "br"); a tag with no coding suffix -> (tag, None)."""
    tag = tag.strip()
    if tag.startswith('"') and tag.endswith('"'):
        for coding in codings:
            suffix = f'-{coding}"'
            if tag.endswith(suffix) and len(tag) > len(suffix) + 1:
                return tag[:-len(suffix)] + '"', coding
    return tag, None


def entity_tags(value: str) -> list[str]:
    """The members of an If-None-Match list (§13.1.2); commas inside quotes are kept."""
    tags: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            tags.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    tags.append("".join(current).strip())
    return [t for t in tags if t]


@dataclass(frozen=True, slots=True)
class Validators:
    """The client's validators as the cache and the upstream must see them, and which coded
    tags the client named (to name them back on a 304)."""

    if_none_match: str | None
    coded: dict[str, str]          # coding -> the client's tag for it ('"v1-br"')
    drop_range: bool               # If-Range named a coded tag: answer whole (§13.1.5)


def plain_validators(if_none_match: str | None, if_range: str | None,
                     codings: tuple[str, ...]) -> Validators | None:
    """The request's validators with coding suffixes taken off, or None when it names none.

    The stored response and the upstream know the identity tag only: `"v1-br"` is
    `"v1"` to them. If-Range with a coded tag can never hold, since a range is always of
    the identity bytes (206 is never compressed): the request is answered whole instead.
    """
    coded: dict[str, str] = {}
    rewritten: list[str] = []
    if if_none_match is not None:
        for tag in entity_tags(if_none_match):
            weak = tag.startswith("W/")
            plain, coding = split_coded(tag[2:] if weak else tag, codings)
            if coding is not None:
                coded[coding] = tag
                plain = f"W/{plain}" if weak else plain
            rewritten.append(plain if coding is not None else tag)
    drop_range = if_range is not None and split_coded(if_range, codings)[1] is not None
    if not coded and not drop_range:
        return None
    return Validators(", ".join(dict.fromkeys(rewritten)) if if_none_match is not None
                      else None, coded, drop_range)


def with_vary(vary: list[str], name: str = "Accept-Encoding") -> str | None:
    """The Vary value with `name` added (None: already there, or "*" covers it)."""
    listed = [token.strip().lower() for value in vary for token in value.split(",")]
    if name.lower() in listed or "*" in listed:
        return None
    return ", ".join([*(v for v in vary if v.strip()), name])
