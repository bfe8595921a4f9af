"""L1: LRU by bytes, variants per URL, tag and URL purges; the Redis wire form round-trips."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.cache.entry import Entry, decode, encode
from gateway.cache.memory import MemoryStore
from gateway.cache.policy import Freshness


def entry(url: str, body: bytes = b"x" * 100, variant: str = "-",
          tags: tuple[str, ...] = ()) -> Entry:
    return Entry(url=url, variant=variant, vary=(), vary_values=(), status=200, reason="OK",
                 headers=CIMultiDictProxy(CIMultiDict([("ETag", '"a"')])), body=body,
                 initial_age=0.0, response_time=1000.0, fresh=Freshness(60.0), tags=tags)


def test_lru_evicts_least_recently_used_within_the_byte_budget() -> None:
    one = entry("a")
    store = MemoryStore(max_bytes=one.size * 2)
    store.put(one)
    store.put(entry("b"))
    store.touch(store.variants("a")[0])  # a is now the most recent
    store.put(entry("c"))
    assert [e.url for e in (*store.variants("a"), *store.variants("c"))] == ["a", "c"]
    assert store.variants("b") == []
    assert store.size <= store.max_bytes


def test_an_entry_larger_than_the_budget_is_refused() -> None:
    store = MemoryStore(max_bytes=50)
    assert not store.put(entry("a"))
    assert store.size == 0


def test_variants_tags_and_purges() -> None:
    store = MemoryStore(max_bytes=10**6)
    store.put(entry("a", variant="v1", tags=("t",)))
    store.put(entry("a", variant="v2"))
    store.put(entry("b", tags=("t", "u")))
    assert len(store.variants("a")) == 2
    assert store.drop_tag("t") == 3  # the whole URL of a tagged variant goes
    assert len(store) == 0 and store.size == 0
    store.put(entry("c"))
    assert store.drop_url("c") == 1 and store.drop_url("c") == 0
    store.put(entry("d"))
    assert store.clear() == 1


def test_wire_form_round_trips_and_rejects_junk() -> None:
    original = entry("http://s/a", body=b"hello" * 300, tags=("p",))
    data = encode(original)
    assert len(data) < len(original.body)  # compressed (RAW_BELOW and more)
    assert decode(data) == original
    assert decode(b"junk") is None
    assert decode(b"\x00\x00\x00\x02{}") is None
