"""Bounded FIFO lanes for `action: queue`, one per rule key (in this process).

A request joins the lane of its key and waits for its turn; the head decides, and on
leaving (admitted, refused, timed out or cancelled because the client went away) passes the
turn to the next, so requests are admitted in arrival order as capacity frees.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Lanes:
    def __init__(self) -> None:
        self._lanes: dict[str, deque[asyncio.Future[None]]] = {}

    def busy(self, key: str) -> bool:
        return key in self._lanes

    def join(self, key: str, size: int) -> asyncio.Future[None] | None:
        """A future that completes at this request's turn; None when the lane is full."""
        lane = self._lanes.setdefault(key, deque())
        if len(lane) >= size:
            return None
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not lane:
            turn.set_result(None)
        lane.append(turn)
        return turn

    def leave(self, key: str, turn: asyncio.Future[None]) -> None:
        lane = self._lanes.get(key)
        if lane is None or turn not in lane:
            return
        head = lane[0] is turn
        lane.remove(turn)
        if not lane:
            del self._lanes[key]
        elif head and not lane[0].done():
            lane[0].set_result(None)
