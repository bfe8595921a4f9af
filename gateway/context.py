"""The request context every later stage reads: who is calling, from where, on what plan.

`build_context` is a pure function of the settings, the peer address and the request headers.
Identity headers are believed only from trusted proxies; from anyone else they are dropped
before anything reads or forwards them, so a client cannot claim another user's identity.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from multidict import MultiMapping, istr

from gateway.config.model import CONTEXT_FIELDS, ContextSettings, IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")
Owner = TypeVar("Owner")
K = TypeVar("K")
V = TypeVar("V")


class RequestContext(NamedTuple):
    """Who is calling, from where, on what plan; immutable.

    A NamedTuple rather than a frozen dataclass because one is built for every request that
    needs it: making a frozen dataclass of these eleven members cost ~1.2 us (one
    object.__setattr__ each), a tuple ~0.1 us (timeit, on the benchmark machine).
    """

    client_ip: str
    user_id: str | None = None
    tenant_id: str | None = None
    role: str | None = None
    subscription_tier: str | None = None
    region: str | None = None
    segment: str | None = None
    device: str | None = None
    api_key: str | None = None  # a hash of the key, never the key itself
    attributes: Mapping[str, str] = MappingProxyType({})
    environment: str = ""

    def get(self, name: str) -> str | None:
        """A field by the name flag targeting and rule scopes use: `user_id`, `attributes.x`."""
        if name.startswith("attributes."):
            return self.attributes.get(name[11:])
        value = getattr(self, name, None)
        return value if isinstance(value, str) else None


_ATTRIBUTES = RequestContext._fields.index("attributes")
assert RequestContext._fields[:len(CONTEXT_FIELDS)] == CONTEXT_FIELDS


def hash_api_key(key: str) -> str:
    """Keys and logs carry this instead of the API key (sha256, 128 bits, hex)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def parse_ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # 203.0.113.7:5000
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: IPAddress | None, trusted: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in net for net in trusted)


# Memos kept per config object (a trusted-proxy tuple, a ContextSettings): keyed by the
# object's id and holding the object itself, so the id cannot be reused while the entry
# lives. A reload brings new objects; after OWNERS_MAX of them the table starts afresh.
OWNERS_MAX = 16
MEMO_MAX = 4096  # entries one memo holds before it is emptied


def _memo_of(table: dict[int, tuple[Any, T]], owner: Owner, make: Callable[[Owner], T]) -> T:
    entry = table.get(id(owner))
    if entry is None or entry[0] is not owner:
        if len(table) >= OWNERS_MAX:
            table.clear()
        entry = table[id(owner)] = (owner, make(owner))
    return entry[1]


def remember(memo: dict[K, V], key: K, value: V, limit: int = MEMO_MAX) -> V:
    """`memo[key] = value`, emptying `memo` first when it holds `limit` entries already:
    every per-request memo here is bounded this way, so a scan of distinct values costs
    memory only up to the bound."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


class Memo(dict[K, V]):
    """`make(key)` per key, remembered (bounded as `remember` bounds): a key met before is
    found by dict's own C code, a new one made by `__missing__`. Callers on a hot path call
    the bound `__getitem__`: a subscript of a dict subclass goes through CPython's generic
    slot, ~500 instructions where the call is ~100 (callgrind)."""

    __slots__ = ("limit", "make")

    def __init__(self, make: Callable[[K], V], limit: int = MEMO_MAX) -> None:
        super().__init__()
        self.make, self.limit = make, limit

    def __missing__(self, key: K) -> V:
        return remember(self, key, self.make(key), self.limit)


# (address as text) -> (normalised address or None when unparsable, trusted?), per trusted set.
Verdict = tuple[str | None, bool]
_VERDICTS: dict[int, tuple[Any, dict[str, Verdict]]] = {}


def classify(text: str, trusted: Sequence[IPNetwork]) -> Verdict:
    """parse_ip + is_trusted, memoised: the same few peers and proxies come back all the time.

    Parsing with `ipaddress` was the largest cost of building a context (tests/perf).
    """
    known: dict[str, Verdict] = _memo_of(_VERDICTS, trusted, lambda _: {})
    verdict = known.get(text)
    if verdict is None:
        address = parse_ip(text)
        verdict = remember(known, text, (None if address is None else str(address),
                                         is_trusted(address, trusted)))
    return verdict


def resolve_client_ip(peer: str, hops: Iterable[str], trusted: Sequence[IPNetwork]) -> str:
    """The right-most hop that is not a trusted proxy; the peer when every hop is trusted.

    `hops` are the X-Forwarded-For entries, left to right. The walk starts at the peer and
    goes left only through trusted proxies: anything left of the first untrusted hop was
    written by a party we cannot believe. An unparsable hop ends the walk; the last address
    seen (a trusted proxy) is then the best we know.
    """
    current = peer
    if not classify(peer, trusted)[1]:
        return peer
    for hop in reversed(list(hops)):
        address, hop_trusted = classify(hop, trusted)
        if address is None:
            return current
        current = address
        if not hop_trusted:
            return current
    return current


def split_forwarded_for(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def identity_headers(settings: ContextSettings) -> tuple[str, ...]:
    """Every header the context reads, lower-cased: dropped from untrusted peers."""
    names = [settings.client_ip.header]
    names += [s.header for s in settings.fields.values()]
    names += [s.header for s in settings.attributes.values()]
    return tuple(dict.fromkeys(n.lower() for n in names))


class _Reader:
    """How one `ContextSettings` turns header values into a context, worked out once.

    Values are taken as the HTTP parser gives them: without the whitespace around a field
    value (SP and HTAB, RFC 9110 §5.5; aiohttp's C parser removes the trailing ones since
    3.14.4, the floor in pyproject.toml), and with nothing else removed, so the upstream,
    which gets the same field, reads the same identity.

    `names` are the identity headers to read (each once, as `istr`, which multidict looks up
    without lower-casing it again); `fields` and `attributes` say where each context member
    takes its value from among them; `template` holds every member's default.

    Contexts are not memoised per caller: with more distinct callers than a memo holds, its
    upkeep cost more than building (3.5 us against 1.5 us per request for the 50,000 users
    of tests/perf/bench_flags.py), and a hit saved only ~0.5 us.
    """

    __slots__ = ("attributes", "fields", "names", "nothing", "template")

    def __init__(self, settings: ContextSettings) -> None:
        names: dict[str, int] = {}

        def position(header: str) -> int:
            return names.setdefault(header.lower(), len(names))

        # (index in RequestContext, position in names, default); index 1 is user_id.
        self.fields = tuple((CONTEXT_FIELDS.index(name), position(source.header),
                             source.default)
                            for name, source in settings.fields.items()
                            if name in CONTEXT_FIELDS and name != "client_ip")
        self.attributes = tuple((name, position(source.header), source.default)
                                for name, source in settings.attributes.items())
        self.names = tuple(istr(name) for name in names)
        self.nothing: tuple[str | None, ...] = (None,) * len(names)
        template: list[Any] = [None] * len(RequestContext._fields)
        for index, _, default in self.fields:
            template[index] = default
        template[_ATTRIBUTES] = _EMPTY
        self.template = template

    def build(self, client_ip: str, values: tuple[str | None, ...],
              environment: str) -> RequestContext:
        members = self.template.copy()
        members[0], members[_ENVIRONMENT] = client_ip, environment
        for index, at, _ in self.fields:
            value = values[at]
            if value:  # blank or absent: the default
                members[index] = value
        if members[_API_KEY]:
            members[_API_KEY] = hash_api_key(members[_API_KEY])
        if self.attributes:
            attributes = {}
            for name, at, default in self.attributes:
                value = values[at]
                if value is None:
                    value = default
                if value:  # a blank one is no attribute
                    attributes[name] = value
            members[_ATTRIBUTES] = attributes
        # `_make` checks the length (the template fixes it) in a Python frame of its own.
        return _new(RequestContext, members)


_READERS: dict[int, tuple[Any, _Reader]] = {}
_new = tuple.__new__
_API_KEY = CONTEXT_FIELDS.index("api_key")
_ENVIRONMENT = RequestContext._fields.index("environment")
_EMPTY: Mapping[str, str] = RequestContext._field_defaults["attributes"]


def client_address(settings: ContextSettings, peer: str, headers: MultiMapping[str],
                   forwarded_for: Sequence[str] | None = None) -> tuple[str, bool]:
    """(client IP, whether the peer is a trusted proxy): the peer itself, unless it is a
    trusted proxy that says (X-Forwarded-For) whom it forwards for.

    `forwarded_for`: every value of the client-IP header (None: read them from `headers`,
    and only for a trusted peer)."""
    if not classify(peer, settings.trusted_proxies)[1]:
        return peer, False
    if forwarded_for is None:
        forwarded_for = headers.getall(settings.client_ip.header, ())
    return forwarded_client(peer, forwarded_for, settings.trusted_proxies), True


def forwarded_client(peer: str, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
                     ) -> str:
    """The client of a trusted peer that sent these values of the client-IP header."""
    if not forwarded_for:
        return peer
    return resolve_client_ip(peer, split_forwarded_for(forwarded_for), trusted)


def build_context(
    settings: ContextSettings,
    peer: str,
    headers: MultiMapping[str],
    forwarded_for: Sequence[str] | None = None,
    environment: str = "",
) -> tuple[RequestContext, bool]:
    """(context, peer_trusted). Headers are read only when the peer is a trusted proxy.

    `headers` is case-insensitive (aiohttp's CIMultiDict); `forwarded_for` all values of the
    client-IP header, since a proxy chain may send it more than once (None: read them from
    `headers`, and only for a trusted peer).
    """
    reader = _memo_of(_READERS, settings, _Reader)
    client_ip, trusted = client_address(settings, peer, headers, forwarded_for)
    if trusted:
        return reader.build(client_ip, tuple(map(headers.get, reader.names)),
                            environment), True
    return reader.build(peer, reader.nothing, environment), False


class FieldSource(NamedTuple):
    """Python statements that set one variable per context field named, and the constants
    they use: what generated code (gateway/flags/plan.py) runs instead of building a whole
    context when it needs only a few fields.

    `from_headers` reads as `build_context` does, from `headers` (the request's header
    section), `peer` (its address) and `trusted` (whether the peer is a trusted proxy, as
    `classify` says), with `_environment` for the environment; `from_context` reads the same
    fields off a built context `ctx`. tests/unit/test_context.py checks both against
    build_context.
    """

    variables: dict[str, str]  # field name (user_id, attributes.x, client_ip) -> variable
    from_headers: list[str]
    from_context: list[str]
    constants: dict[str, Any]


_ARGUMENTS = ("client_ip", "environment")  # read by every entry point in its own way


def field_source(settings: ContextSettings, names: Iterable[str],
                 loose: Container[str] = ()) -> FieldSource:
    """`loose`: fields whose reader only asks whether they are set before it uses them (a
    flag's targeting tests and bucketing): such a field may hold any false value (None or
    "") where the context holds another, which spares normalising it to its default when
    the default is itself false. Every other field reads exactly as in the context."""
    variables: dict[str, str] = {}
    reads: list[str] = []  # one header read per field, in `names` order
    normalise: list[str] = []  # what each value read becomes in the context
    context: list[str] = []
    constants: dict[str, Any] = {"_hash_api_key": hash_api_key}
    for name in dict.fromkeys(names):
        if name in _ARGUMENTS:
            variables[name] = name
            context.append(f"{name} = ctx.{name}")
            continue
        v = variables[name] = f"v{sum(1 for n in variables if n not in _ARGUMENTS)}"
        # Each as _Reader.build: an attribute header that is absent takes the default and
        # a blank one is no attribute; a blank field takes its default like an absent one.
        if name.startswith("attributes."):
            attribute = name[len("attributes."):]
            constants[f"_n_{v}"] = attribute
            context.append(f"{v} = ctx.attributes.get(_n_{v})")
            source = settings.attributes.get(attribute)
            if source is not None:
                if source.default:
                    normalise.append(f"{v} = _d_{v} if {v} is None else {v}" if name in loose
                                     else f"{v} = _d_{v} if {v} is None else ({v} or None)")
                elif name not in loose:
                    normalise.append(f"{v} = {v} or None")
        else:
            if name not in CONTEXT_FIELDS:  # never a name of the request's into the code
                raise ValueError(f"not a context field: {name!r}")
            context.append(f"{v} = ctx.{name}")
            source = settings.fields.get(name)
            if source is not None and (source.default or name not in loose):
                normalise.append(f"{v} = {v} or _d_{v}")
        if source is None:
            normalise.append(f"{v} = None")
            continue
        constants[f"_h_{v}"], constants[f"_d_{v}"] = istr(source.header.lower()), source.default
        reads.append(v)
        if name == "api_key":
            normalise.append(f"{v} = _hash_api_key({v}) if {v} else {v}")
    # Identity headers are believed only from a trusted peer (build_context).
    trusted = [f"{v} = headers.get(_h_{v})" for v in reads]
    untrusted = [f"{' = '.join(reads)} = None"] if reads else []
    if "client_ip" in variables:
        trusted += ["forwarded = headers.getall(_client_ip_header, ())",
                    "client_ip = _forwarded_client(peer, forwarded, _trusted_proxies) "
                    "if forwarded else peer"]
        untrusted.append("client_ip = peer")
    headers = ["if trusted:", *("    " + line for line in trusted),
               "else:", *("    " + line for line in untrusted)] if trusted else []
    headers += normalise
    if "environment" in variables:
        headers.append("environment = _environment")
    constants.update(_client_ip_header=istr(settings.client_ip.header.lower()),
                     _forwarded_client=forwarded_client,
                     _trusted_proxies=settings.trusted_proxies)
    return FieldSource(variables, headers, context, constants)
