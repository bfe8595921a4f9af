"""Coded variants travel with their entry: counted in its size, kept through L2's format."""

from __future__ import annotations

import zlib

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache.entry import RAW_BELOW, Entry, decode, encode
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


def test_a_small_body_is_stored_as_it_is_and_a_large_one_compressed() -> None:
    small, large = entry(b"s" * (RAW_BELOW - 1)), entry(b"l" * RAW_BELOW)
    small.encoded["br"] = b"\x1b\x00coded"  # the coded variants sit before the body
    small_data, large_data = encode(small), encode(large)
    assert small_data.endswith(small.body)
    assert len(large_data) < RAW_BELOW  # 1,024 repeated bytes deflate to a few
    for stored, data in ((small, small_data), (large, large_data)):
        back = decode(data)
        assert back is not None and back.body == stored.body
        assert back.encoded == stored.encoded


def test_metadata_without_z_means_a_compressed_body() -> None:
    e = entry(b"x" * 100)
    data = encode(e)
    size = int.from_bytes(data[:4], "big")
    meta = orjson.loads(data[4:4 + size])
    del meta["z"]
    old = orjson.dumps(meta)
    old_form = len(old).to_bytes(4, "big") + old + zlib.compress(e.body)
    back = decode(old_form)
    assert back is not None and back.body == e.body
    # ...and a raw body read as a compressed one is refused (a miss), never served garbled
    assert decode(len(old).to_bytes(4, "big") + old + e.body) is None
