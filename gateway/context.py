"""The request context every later stage reads: who is calling, from where, on what plan.

`build_context` is a pure function of the settings, the peer address and the request headers.
Identity headers are believed only from trusted proxies; from anyone else they are dropped
before anything reads or forwards them, so a client cannot claim another user's identity.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config.model import ContextSettings, IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class RequestContext:
    client_ip: str
    user_id: str | None = None
    tenant_id: str | None = None
    role: str | None = None
    subscription_tier: str | None = None
    region: str | None = None
    segment: str | None = None
    device: str | None = None
    api_key: str | None = None  # a hash of the key, never the key itself
    attributes: Mapping[str, str] = field(default_factory=dict)
    environment: str = ""

    def get(self, name: str) -> str | None:
        """A field by the name flag targeting and rule scopes use: `user_id`, `attributes.x`."""
        if name.startswith("attributes."):
            return self.attributes.get(name[11:])
        value = getattr(self, name, None)
        return value if isinstance(value, str) else None


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


def _memo_of(table: dict[int, tuple[Any, T]], owner: object, make: Callable[[], T]) -> T:
    entry = table.get(id(owner))
    if entry is None or entry[0] is not owner:
        if len(table) >= OWNERS_MAX:
            table.clear()
        entry = table[id(owner)] = (owner, make())
    return entry[1]


def _remember(memo: dict[K, V], key: K, value: V) -> V:
    if len(memo) >= MEMO_MAX:
        memo.clear()
    memo[key] = value
    return value


# (address as text) -> (normalised address or None when unparsable, trusted?), per trusted set.
Verdict = tuple[str | None, bool]
_VERDICTS: dict[int, tuple[Any, dict[str, Verdict]]] = {}


def classify(text: str, trusted: Sequence[IPNetwork]) -> Verdict:
    """parse_ip + is_trusted, memoised: the same few peers and proxies come back all the time.

    Parsing with `ipaddress` was the largest cost of building a context (tests/perf).
    """
    known = _memo_of(_VERDICTS, trusted, dict)
    verdict = known.get(text)
    if verdict is None:
        address = parse_ip(text)
        verdict = _remember(known, text, (None if address is None else str(address),
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


# Contexts already built, per settings object: (client ip, environment, the identity header
# values when trusted) -> context. A context is immutable and a pure function of these, so
# requests from the same caller share one instead of each building an 11-field frozen
# record (a measurable share of a bare request, tests/perf). Never keyed on an API key:
# requests carrying one are built afresh, so raw keys are not kept around.
ContextKey = tuple[str, str, tuple[str | None, ...] | None]
_CONTEXTS: dict[int, tuple[Any, tuple[tuple[str, ...], dict[ContextKey, RequestContext]]]] = {}


def _context_memo(settings: ContextSettings,
                  ) -> tuple[tuple[str, ...], dict[ContextKey, RequestContext]]:
    """The identity header names to key on, and the contexts already built, for `settings`."""
    def make() -> tuple[tuple[str, ...], dict[ContextKey, RequestContext]]:
        names = tuple(dict.fromkeys(
            [s.header for s in settings.fields.values()]
            + [s.header for s in settings.attributes.values()]))
        return names, {}

    return _memo_of(_CONTEXTS, settings, make)


def build_context(
    settings: ContextSettings,
    peer: str,
    headers: Mapping[str, str],
    forwarded_for: Sequence[str] = (),
    environment: str = "",
) -> tuple[RequestContext, bool]:
    """(context, peer_trusted). Headers are read only when the peer is a trusted proxy.

    `headers` is case-insensitive (aiohttp's CIMultiDict); `forwarded_for` all values of the
    client-IP header, since a proxy chain may send it more than once.
    """
    trusted = classify(peer, settings.trusted_proxies)[1]
    client_ip = peer
    if trusted:
        client_ip = resolve_client_ip(peer, split_forwarded_for(forwarded_for),
                                      settings.trusted_proxies)
    names, known = _context_memo(settings)
    api_key_source = settings.fields.get("api_key")
    key: ContextKey | None = (client_ip, environment, None)
    if trusted:
        if api_key_source is not None and headers.get(api_key_source.header) is not None:
            key = None
        else:
            key = (client_ip, environment, tuple([headers.get(name) for name in names]))
    if key is not None:
        context = known.get(key)
        if context is None:
            context = _remember(known, key,
                                _build(settings, client_ip, trusted, headers, environment))
        return context, trusted
    return _build(settings, client_ip, trusted, headers, environment), trusted


def _build(settings: ContextSettings, client_ip: str, trusted: bool,
           headers: Mapping[str, str], environment: str) -> RequestContext:
    def read(name: str) -> str | None:
        source = settings.fields.get(name)
        if source is None:
            return None
        value = headers.get(source.header) if trusted else None
        return value.strip() or source.default if value is not None else source.default

    api_key = read("api_key")
    attributes = {}
    for name, source in settings.attributes.items():
        value = headers.get(source.header) if trusted else None
        value = value.strip() if value is not None else source.default
        if value:
            attributes[name] = value
    return RequestContext(
        client_ip=client_ip,
        user_id=read("user_id"),
        tenant_id=read("tenant_id"),
        role=read("role"),
        subscription_tier=read("subscription_tier"),
        region=read("region"),
        segment=read("segment"),
        device=read("device"),
        api_key=hash_api_key(api_key) if api_key else None,
        attributes=attributes,
        environment=environment,
    )
