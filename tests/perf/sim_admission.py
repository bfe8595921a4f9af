"""The admission controller on a virtual clock: the target scenario without the machine.

`gateway.admission.control.Controller` is pure (the time is passed in), so it can be driven
through bench_admission.py's scenario as a discrete-event simulation: an open-loop arrival
every 1 / rate seconds (10% critical, 90% bulk), an upstream that serves `capacity` at once
in `delay` seconds (x uniform(1 - jitter, 1 + jitter)), and a gap on each side of the
upstream's work (the gateway and the kernel: from a grant to the upstream starting, from
the upstream finishing to the permit coming back), exponential with mean `gap`. Timers fire
exactly when the controller asks. What it prints is the controller's own share of every
figure: what is left in bench_admission.py's is the event loops' and the machine's.

    .venv/bin/python tests/perf/sim_admission.py [--seconds 8] [--jitter 0 0.3] [--gap 0.0004]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.admission.control import GRANTED, Controller
from gateway.config.model import Admission

CRITICAL, BULK = 0, 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q / 100 * (len(ordered) - 1))] if ordered else float("nan")


def simulate(seconds: float, rate: float, capacity: int, delay: float, jitter: float,
             gap: float, target: float, seed: int = 7) -> dict[str, object]:
    rng = random.Random(seed)
    control = Controller(Admission(max_concurrency=capacity, target_delay=target))
    events: list[tuple[float, int, str, object]] = []
    order = itertools.count()

    def push(when: float, kind: str, data: object = None) -> None:
        heapq.heappush(events, (when, next(order), kind, data))

    for i in range(int(rate * seconds)):
        push(i / rate, "arrive", CRITICAL if rng.random() < 0.1 else BULK)
    latency: dict[int, list[float]] = {CRITICAL: [], BULK: []}
    shed_at_arrival: dict[str, int] = {}
    shed_queued: list[float] = []
    served = ticks = 0
    timer: float | None = None
    upstream_busy = 0.0

    def grant(now: float, arrived: float, rank: int) -> None:
        nonlocal upstream_busy
        work = delay * rng.uniform(1 - jitter, 1 + jitter)
        upstream_busy += work
        start = now + rng.expovariate(1 / gap)
        push(start + work + rng.expovariate(1 / gap), "release", (now, rank, arrived))

    def settle(now: float) -> None:
        nonlocal timer
        for waiter in control.settled:
            if waiter.outcome == GRANTED:
                grant(now, waiter.enqueued, waiter.rank)
            else:
                shed_queued.append(now - waiter.enqueued)
        control.settled = []
        when = control.next_wakeup()
        if when is not None and (timer is None or when < timer):
            timer = max(when, now + 1e-6)  # a real clock moves on between turns
            push(timer, "tick")

    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            assert isinstance(data, int)
            verdict = control.arrive(data, now)
            if verdict is None:
                grant(now, now, data)
            elif isinstance(verdict, str):
                shed_at_arrival[verdict] = shed_at_arrival.get(verdict, 0) + 1
        elif kind == "release":
            granted, rank, arrived = data  # type: ignore[misc]
            served += 1
            latency[rank].append(now - arrived)
            control.release(now - granted, now - granted, now)
        elif now == timer:
            timer = None
            ticks += 1
            control.tick(now)
        settle(now)
    early = sum(shed_at_arrival.values())
    return {
        "served_of_capacity": f"{served / seconds / (capacity / delay):.1%}",
        "upstream_busy_of_capacity": f"{upstream_busy / (capacity * seconds):.1%}",
        "critical_p99_ms": round(percentile(latency[CRITICAL], 99) * 1000, 1),
        "shed_at_arrival": shed_at_arrival,
        "shed_from_the_queue": len(shed_queued),
        "shed_at_arrival_share": f"{early / max(1, early + len(shed_queued)):.1%}",
        "queued_shed_wait_p50_ms": round(percentile(shed_queued, 50) * 1000, 1),
        "timer_ticks": ticks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=1200.0)
    parser.add_argument("--capacity", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--jitter", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--gap", type=float, default=0.0004,
                        help="mean seconds on each side of the upstream's work")
    parser.add_argument("--target-delay", type=float, default=0.02)
    args = parser.parse_args()
    for jitter in args.jitter:
        figures = simulate(args.seconds, args.rate, args.capacity, args.delay, jitter,
                           args.gap, args.target_delay)
        print(f"jitter +-{jitter:.0%}, gap {args.gap * 1000:.2f} ms each side: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
