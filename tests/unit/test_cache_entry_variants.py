"""Coded variants travel with their entry: counted in its size, kept through L2's format."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache.entry import Entry, decode, encode
from gateway.cache.memory import MemoryStore
from gateway.cache.policy import Freshness


def entry(body: bytes = b"x" * 1000) -> Entry:
    return Entry(url="u", variant="-", vary=(), vary_values=(), status=200, reason="OK",
                 headers=CIMultiDictProxy(CIMultiDict({"Content-Type": "text/plain"})),
                 body=body, initial_age=0.0, response_time=1.0, fresh=Freshness(60.0))


def test_variants_round_trip_through_the_l2_format() -> None:
    e = entry()
    e.encoded["br"] = b"\x1b\x00coded"
    e.encoded["gzip"] = b"\x1f\x8bcoded"
    back = decode(encode(e))
    assert back is not None
    assert back.body == e.body and back.encoded == e.encoded


def test_variants_count_against_memory_max() -> None:
    store = MemoryStore(10_000)
    e = entry()
    store.put(e)
    before = store.size
    e.encoded["br"] = b"y" * 500
    store.grew(e, e.size - before)
    assert store.size == e.size >= before + 500
    store.remove("u", "-")
    assert store.size == 0


def test_a_growing_entry_evicts_the_least_recently_used() -> None:
    store = MemoryStore(3000)
    old, new = entry(), entry()
    object.__setattr__(old, "url", "old")
    store.put(old)
    store.put(new)
    before = new.size
    new.encoded["br"] = b"y" * 1000
    store.grew(new, new.size - before)
    assert len(store) == 1 and store.variants("u") == [new]
