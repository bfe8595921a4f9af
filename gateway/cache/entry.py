"""One stored response and its wire form for Redis (metadata as JSON, the content-coded
variants as they are: coding them again would gain nothing, then the body, zlib-compressed
when it is RAW_BELOW bytes or more)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache.policy import Freshness, current_age

if TYPE_CHECKING:
    from gateway.proxy import StoredHead

_OVERHEAD = 256  # bookkeeping bytes per entry, so a flood of empty bodies still counts
_FORMAT = 2
# A body this small is stored as it is: compressing it saves a few hundred bytes of Redis
# at most, while inflating it costs every L2 hit ~6.5k instructions (zlib's state set up,
# the Adler-32 check), 1.5% of such a hit. Metadata without "z" means a compressed body,
# so older releases' entries still read; an older release fails to inflate a raw body and
# counts a miss.
RAW_BELOW = 1024


# Not frozen: nothing assigns to an entry once made (a refreshed one is a copy), but a
# frozen dataclass sets each field through object.__setattr__, which made building one
# (every L2 hit decodes one, every store makes one) cost 1.7 us instead of 0.5.
@dataclass(slots=True)
class Entry:
    url: str                               # primary key (gateway.cache.key.url_key)
    variant: str                           # secondary key (gateway.cache.key.variant_id)
    vary: tuple[str, ...]                  # lower-cased field names the response varies on
    vary_values: tuple[str | None, ...]    # the request's normalised values for them
    status: int
    reason: str
    headers: CIMultiDictProxy[str]         # end-to-end fields as the upstream sent them
    body: bytes
    initial_age: float                     # corrected_initial_age (RFC 9111 §4.2.3)
    response_time: float                   # wall clock, so other processes can age it too
    fresh: Freshness
    tags: tuple[str, ...] = ()
    # The body in each content coding a client was sent (gateway.compression): made once,
    # kept while the entry is (counted in `size`), stored in L2 with it.
    # init=False: dataclasses.replace (a refreshed entry, a template's copy) starts afresh.
    encoded: dict[str, bytes] = field(
        default_factory=dict, init=False, compare=False, repr=False)
    # Per base head, coding and request kind, what a hit sends (gateway.compression.stage).
    coded_heads: dict[tuple[Any, ...], tuple[StoredHead, bytes, str | None]] = field(
        default_factory=dict, init=False, compare=False, repr=False)
    # The headers a hit sends, built once per route's drop set (gateway.cache.stage): never
    # copied by dataclasses.replace (init=False), so a refreshed entry builds its own.
    client: dict[frozenset[str], StoredHead] = field(
        default_factory=dict, init=False, compare=False, repr=False)

    @property
    def size(self) -> int:
        """What `memory_max` counts for this entry: the body, the stored fields, and the
        head a hit builds from them once (`client`: those fields again, and serialized)."""
        fields = sum(len(k) + len(v) for k, v in self.headers.items())
        coded = sum(map(len, self.encoded.values())) + 2 * fields * len(self.encoded) \
            if self.encoded else 0
        return len(self.body) + 3 * fields + _OVERHEAD + coded

    def age(self, now: float) -> float:
        return current_age(self.initial_age, self.response_time, now)

    def ttl(self, now: float) -> float:
        """Freshness left: negative once stale (RFC 9211 §2.5)."""
        return self.fresh.lifetime - self.age(now)

    def refreshed(self, headers: list[tuple[str, str]], initial_age: float,
                  response_time: float, fresh: Freshness) -> Entry:
        return replace(self, headers=CIMultiDictProxy(CIMultiDict(headers)),
                       initial_age=initial_age, response_time=response_time, fresh=fresh)


def encode(entry: Entry, level: int = 1) -> bytes:
    meta = orjson.dumps({
        "v": _FORMAT, "url": entry.url, "variant": entry.variant, "vary": entry.vary,
        "vary_values": entry.vary_values, "status": entry.status, "reason": entry.reason,
        "headers": list(entry.headers.items()), "initial_age": entry.initial_age,
        "response_time": entry.response_time, "fresh": entry.fresh.to_list(),
        "tags": entry.tags,
        "encoded": [[name, len(body)] for name, body in entry.encoded.items()],
        "z": len(entry.body) >= RAW_BELOW,
    })
    body = entry.body if len(entry.body) < RAW_BELOW else _compress(entry.body, level)
    return b"".join((len(meta).to_bytes(4, "big"), meta, *entry.encoded.values(), body))


def _compress(body: bytes, level: int) -> bytes:
    """zlib with a window (and hash table) just larger than the body: the defaults set up
    256 KiB of compressor state for every entry, which a loaded gateway's caches pay for
    (a 512-byte body: 3 us warm, 80-120 us measured in the store path); sized to the body
    it is a few KiB, and the output is the same for bodies under 32 KiB. Any zlib reader
    takes a smaller window (`decode` included)."""
    bits = min(15, max(10, len(body).bit_length() + 1))
    compressor = zlib.compressobj(level, zlib.DEFLATED, bits, bits - 7)
    return compressor.compress(body) + compressor.flush()


def decode(data: bytes) -> Entry | None:
    """None for anything that is not an entry this version wrote (treated as a miss)."""
    try:
        size = int.from_bytes(data[:4], "big")
        meta = orjson.loads(data[4:4 + size])
        if meta.get("v") != _FORMAT:
            return None
        at = 4 + size
        encoded: dict[str, bytes] = {}
        for name, length in meta["encoded"]:
            encoded[str(name)] = data[at:at + int(length)]
            at += int(length)
        entry = Entry(
            url=meta["url"], variant=meta["variant"], vary=tuple(meta["vary"]),
            vary_values=tuple(meta["vary_values"]), status=int(meta["status"]),
            reason=meta["reason"],
            headers=CIMultiDictProxy(CIMultiDict(meta["headers"])),  # [name, value] pairs
            body=zlib.decompress(data[at:]) if meta.get("z", True) else data[at:],
            initial_age=float(meta["initial_age"]),
            response_time=float(meta["response_time"]),
            fresh=Freshness.from_list(meta["fresh"]), tags=tuple(meta["tags"]),
        )
        entry.encoded.update(encoded)
        return entry
    except (ValueError, KeyError, TypeError, IndexError, zlib.error, orjson.JSONDecodeError):
        return None
