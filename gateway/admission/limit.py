"""How many requests an upstream may have in flight: a fixed number, or one that follows it.

`GradientLimit` is a delay-based limiter in the spirit of TCP Vegas and Netflix's gradient
limiters: the upstream's floor latency (what a request takes when nothing queues there) is
known from the fastest recent windows; while the latency stays near that floor and the limit
is in use, the limit grows (by its square root per update, so a small limit finds its level
in a few updates and a large one probes gently); when the latency climbs, the limit falls to
what the upstream actually serves at its floor latency, by Little's law: the requests in
flight times floor / latency, plus the same square-root headroom. An upstream that serves C
requests at once and queues the rest internally therefore keeps between C + sqrt(C) and
TOLERANCE x C, and when C halves (its latency at the old limit doubles) the next update
finds the new C.

Pure: the clock is passed in with every sample.
"""

from __future__ import annotations

import math

UPDATE_EVERY = 0.1  # seconds of samples behind one limit update
MIN_SAMPLES = 3  # fewer samples than this in a window say too little to act on
# Latency up to this multiple of the floor counts as "near the floor". 1.2 kept the limit
# from growing at all when the gateway shared a busy host (its own loop's lag moved window
# averages by more than 20%); 1.5 is Netflix's gradient limiter's default tolerance.
TOLERANCE = 1.5
FLOOR_WINDOW = 10.0  # the floor is the fastest window of the last 10-20 s


class StaticLimit:
    """`max_concurrency: N`: the limit never moves."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.saturated = False

    def sample(self, rtt: float, inflight: int, now: float) -> None:
        """A request held its permit `rtt` seconds; `inflight` were out at its end."""


class GradientLimit:
    """`max_concurrency: adaptive`: follows the upstream's latency, between low and high."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.value = float(low)
        self.saturated = False  # an arrival found every permit taken in this window
        self.floor = math.inf
        self._floor_now = self._floor_before = math.inf
        self._floor_since: float | None = None
        self._window: float | None = None
        self._count = 0
        self._rtt_sum = 0.0
        self._inflight_sum = 0

    @property
    def limit(self) -> int:
        return int(self.value)

    def sample(self, rtt: float, inflight: int, now: float) -> None:
        if self._window is None:
            self._window = now
        self._count += 1
        self._rtt_sum += rtt
        self._inflight_sum += inflight
        if now - self._window >= UPDATE_EVERY and self._count >= MIN_SAMPLES:
            self._update(now)

    def _update(self, now: float) -> None:
        rtt = self._rtt_sum / self._count
        inflight = self._inflight_sum / self._count
        self._remember_floor(rtt, now)
        if rtt <= self.floor * TOLERANCE:
            value = self.value + max(1.0, math.sqrt(self.value)) if self.saturated \
                else self.value
        else:
            capacity = inflight * self.floor / rtt
            value = max(capacity + math.sqrt(capacity), self.value / 2)
        self.value = min(float(self.high), max(float(self.low), value))
        self._window, self._count, self._rtt_sum, self._inflight_sum = now, 0, 0.0, 0
        self.saturated = False

    def _remember_floor(self, rtt: float, now: float) -> None:
        """The floor is the lowest window average (not the lowest sample, which one lucky
        request could set) of two FLOOR_WINDOW buckets, so it follows an upstream that
        really became slower at every load within 10-20 s."""
        if self._floor_since is None:
            self._floor_since = now
        elif now - self._floor_since >= FLOOR_WINDOW:
            self._floor_before, self._floor_now = self._floor_now, math.inf
            self._floor_since = now
        self._floor_now = min(self._floor_now, rtt)
        self.floor = min(self._floor_now, self._floor_before)


Limit = StaticLimit | GradientLimit
