"""Redis Cluster's addressing, as pure functions: the slot of a key, the slot map that
`CLUSTER SLOTS` answers, and what a MOVED / ASK / TRYAGAIN error reply asks of a client.

The Cluster specification (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/):
a key's slot is CRC16-XMODEM of the key, or of its hash tag (the part between the first `{`
and the next `}` when that part is not empty), modulo 16384: redis-py's public
`redis.crc.key_slot`, which its own cluster client routes by, so both agree on every key.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.crc import key_slot as _bytes_slot
from redis.exceptions import AskError, MovedError, TryAgainError

Address = tuple[str, int]


def key_slot(key: str | bytes) -> int:
    """The slot of `key`, honouring a hash tag."""
    return _bytes_slot(key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key)


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which master serves which slot: sorted, non-overlapping ranges."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    owners: tuple[Address, ...]

    def owner(self, slot: int) -> Address | None:
        i = bisect_right(self.starts, slot) - 1
        if i >= 0 and slot <= self.ends[i]:
            return self.owners[i]
        return None

    @property
    def masters(self) -> frozenset[Address]:
        return frozenset(self.owners)


def parse_cluster_slots(reply: Sequence[Any], asked: Address) -> SlotMap:
    """`CLUSTER SLOTS` as answered by node `asked`: [start, end, [host, port, id...], replicas...]
    per range. An empty host means the node answering (the spec's "unknown endpoint")."""
    ranges = []
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        ranges.append((start, end, (host or asked[0], int(master[1]))))
    ranges.sort()
    return SlotMap(tuple(r[0] for r in ranges), tuple(r[1] for r in ranges),
                   tuple(r[2] for r in ranges))


@dataclass(frozen=True, slots=True)
class Redirect:
    """MOVED: the slot lives elsewhere for good (refresh the map); ASK: this one command goes
    to `target` preceded by ASKING (the slot is being migrated there); TRYAGAIN: a multi-key
    command met a slot whose keys are half migrated, so it must be sent again shortly."""

    kind: Literal["MOVED", "ASK", "TRYAGAIN"]
    target: Address | None = None


def redirect_of(error: Exception) -> Redirect | None:
    """The redirection an error reply asks for, or None for any other error. redis-py's
    parser gives MOVED/ASK/TRYAGAIN their own exception classes with the prefix cut off
    (MovedError is an AskError); an error kept as plain text is read from its words."""
    if isinstance(error, MovedError):
        return Redirect("MOVED", (error.host, int(error.port)))
    if isinstance(error, AskError):
        return Redirect("ASK", (error.host, int(error.port)))
    if isinstance(error, TryAgainError):
        return Redirect("TRYAGAIN")
    return parse_redirect(str(error))


def parse_redirect(message: str) -> Redirect | None:
    """The redirection of an error reply's text ("MOVED 3999 127.0.0.1:6381"), or None."""
    parts = message.split()
    if not parts:
        return None
    if parts[0] == "TRYAGAIN":
        return Redirect("TRYAGAIN")
    if parts[0] in ("MOVED", "ASK") and len(parts) >= 3:
        host, _, port = parts[2].rpartition(":")
        if port.isdigit():
            return Redirect("MOVED" if parts[0] == "MOVED" else "ASK", (host, int(port)))
    return None
