"""Permits lent between the workers of one instance, through a ledger in shared memory.

An instance-wide limit L is split into base shares (L // workers, the remainder to the first
workers). Each worker admits on its own within its *quota*, with no system call; the ledger
(one small file per upstream in the supervisor's directory, mapped by every worker) holds
every worker's quota and how many requests it has waiting. A worker with waiters borrows
from what no quota holds; a worker with permits to spare and no waiters lends them back
while another worker has waiters; a worker above its base share gives back, as its permits
return, what a worker below its base share asks for (so a busy worker keeps the headroom
of an idle one, never the share of a busy one).

The bound: a quota grows only under the ledger's lock, and only while the quotas' sum stays
at most L; a worker's requests in flight never exceed its quota (it lowers its quota only
down to what it has out). So the upstream never has more than L in flight from the
instance. A worker that dies leaves its quota in the ledger; its replacement takes the slot
over, clears it and claims its share again.

The lock is `fcntl.lockf` on the ledger's file (released by the kernel if its holder dies);
it is taken only to borrow or to lend, not per request while quotas stand.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path

WORD = struct.Struct("<q")


def base_share(limit: int, workers: int, slot: int) -> int:
    """Worker `slot`'s part of an instance-wide `limit`: the equal split, the remainder to
    the first workers."""
    share, extra = divmod(limit, workers)
    return share + (1 if slot < extra else 0)


class Lease:
    """One worker's quota of one upstream's limit."""

    def __init__(self, path: Path, slot: int, workers: int, limit: int) -> None:
        self.slot, self.workers, self.limit = slot, workers, limit
        self.base = base_share(limit, workers, slot)
        size = 2 * workers * WORD.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
            self._set(slot, 0)  # a slot left by a worker that died: nothing of it is out
            self._set(workers + slot, 0)
            self.quota = 0
            self._take(self.base)

    # ------------------------------------------------------------------ the ledger
    def _get(self, index: int) -> int:
        return int(WORD.unpack_from(self._map, index * WORD.size)[0])

    def _set(self, index: int, value: int) -> None:
        WORD.pack_into(self._map, index * WORD.size, value)

    def _locked(self) -> _Lock:
        return _Lock(self._fd)

    def _take(self, wanted: int) -> int:
        """Under the lock: up to `wanted` more of what no quota holds."""
        held = sum(self._get(i) for i in range(self.workers))
        got = max(0, min(wanted, self.limit - held))
        if got:
            self.quota += got
            self._set(self.slot, self.quota)
        return got

    # ------------------------------------------------------------------ the worker's side
    def borrow(self, wanted: int) -> int:
        """Up to `wanted` more permits, if the other workers' quotas leave them."""
        if self.free() <= 0:
            return 0  # read without the lock: a stale answer only delays a loan
        with self._locked():
            return self._take(wanted)

    def give(self, count: int) -> None:
        """Lower the quota by `count` (permits this worker neither has out nor needs)."""
        if count > 0:
            with self._locked():
                self.quota -= count
                self._set(self.slot, self.quota)

    def wanting(self, waiting: int) -> None:
        """Publish how many requests wait here (read by the others without the lock)."""
        if self._get(self.workers + self.slot) != waiting:
            self._set(self.workers + self.slot, waiting)

    def free(self) -> int:
        return self.limit - sum(self._get(i) for i in range(self.workers))

    def peers_waiting(self) -> tuple[bool, bool]:
        """(another worker has waiters, one of those is below its base share)."""
        anyone = short = False
        for i in range(self.workers):
            if i != self.slot and self._get(self.workers + i) > 0:
                anyone = True
                if self._get(i) < base_share(self.limit, self.workers, i):
                    short = True
        return anyone, short

    def close(self) -> None:
        with self._locked():
            self._set(self.slot, 0)
            self._set(self.workers + self.slot, 0)
        self._map.close()
        os.close(self._fd)


class _Lock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


class Ledger:
    """Where this worker's leases live: `directory` (the supervisor's), its `slot` among
    `workers`."""

    def __init__(self, directory: str, slot: int, workers: int) -> None:
        self.directory, self.slot, self.workers = Path(directory), slot, workers

    def lease(self, upstream: str, limit: int) -> Lease:
        # A file name from any upstream name; the limit in it, so that a reload that
        # changes the limit starts a fresh ledger rather than mixing two bounds.
        key = hashlib.sha256(f"{upstream}\0{limit}".encode()).hexdigest()[:24]
        return Lease(self.directory / f"admission-{key}", self.slot, self.workers, limit)
