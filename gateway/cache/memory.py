"""L1: the in-process store, least recently used first out, bounded by bytes (`memory_max`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from gateway.cache.entry import Entry


class MemoryStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._lru: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        # URL -> variant -> entry. Read by lookups (a URL not in it has nothing stored);
        # changed only by the methods below.
        self.by_url: dict[str, dict[str, Entry]] = {}
        self._by_tag: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def variants(self, url: str) -> list[Entry]:
        found = self.by_url.get(url)
        return list(found.values()) if found else []

    def variants_of(self, url: str) -> Iterable[Entry]:
        """`variants` without the copy, for a lookup that only reads them."""
        found = self.by_url.get(url)
        return found.values() if found else ()

    def touch(self, entry: Entry) -> None:
        key = (entry.url, entry.variant)
        if key in self._lru:
            self._lru.move_to_end(key)

    def put(self, entry: Entry) -> bool:
        """Store (replacing the same variant); False if it alone exceeds the whole budget."""
        size = entry.size  # a sum over the fields: once
        if size > self.max_bytes:
            return False
        self.remove(entry.url, entry.variant)
        key = (entry.url, entry.variant)
        self._lru[key] = entry
        self.by_url.setdefault(entry.url, {})[entry.variant] = entry
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(entry.url)
        self.size += size
        while self.size > self.max_bytes and self._lru:
            (url, variant), _ = next(iter(self._lru.items()))
            self.remove(url, variant)
        return True

    def grew(self, entry: Entry, added: int) -> None:
        """`entry` (if stored) holds `added` bytes more (a content-coded variant of its body)."""
        if self._lru.get((entry.url, entry.variant)) is not entry:
            return
        self.size += added
        while self.size > self.max_bytes and self._lru:
            (url, variant), _ = next(iter(self._lru.items()))
            self.remove(url, variant)

    def remove(self, url: str, variant: str) -> None:
        entry = self._lru.pop((url, variant), None)
        if entry is None:
            return
        self.size -= entry.size
        variants = self.by_url.get(url)
        if variants is not None:
            variants.pop(variant, None)
            if not variants:
                del self.by_url[url]
        for tag in entry.tags:
            urls = self._by_tag.get(tag)
            if urls is not None and not any(tag in e.tags for e in self.variants(url)):
                urls.discard(url)
                if not urls:
                    del self._by_tag[tag]

    def drop_url(self, url: str) -> int:
        variants = list(self.by_url.get(url, {}))
        for variant in variants:
            self.remove(url, variant)
        return len(variants)

    def drop_tag(self, tag: str) -> int:
        return sum(self.drop_url(url) for url in list(self._by_tag.get(tag, ())))

    def clear(self) -> int:
        count = len(self._lru)
        self._lru.clear()
        self.by_url.clear()
        self._by_tag.clear()
        self.size = 0
        return count
