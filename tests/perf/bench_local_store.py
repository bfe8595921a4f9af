"""The in-process rate-limit store: memory per key and CPU per decision. Not collected by
pytest; run as a script:

    python tests/perf/bench_local_store.py [--keys 100000] [--decisions 300000]

1. memory: tracemalloc over `--keys` distinct keys decided once each, per algorithm: what the
   store keeps per key (its slot, the key string, the table entry), the checks themselves
   freed as the plan cache frees them in the gateway.
2. cpu: microseconds of process CPU per `decide_now` of one rule, best of 5 runs, for (a) a hot
   set of 1,000 keys well under the bound (every decision touches the LRU order) and (b) a
   flood of new keys into a full store (every decision evicts one key).
3. the LRU bookkeeping alone, per key a decision reads: `OrderedDict.get` + `move_to_end`
   against a plain `dict.get` on 100,000 keys (timeit, best of 7), i.e. what the bound adds.
Compare figures of one run with each other: the machine is shared.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import timeit
import tracemalloc
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.config.model import Algorithm, RateLimitRule, Scope
from gateway.ratelimit.local import LocalStore
from gateway.ratelimit.rules import Check, make_check, rule_keys

T0 = 1_700_000_000_000_000


def rule(algorithm: Algorithm) -> RateLimitRule:
    return RateLimitRule("user_requests", algorithm, Scope("user"), 100, 60.0, 10)


def store(max_keys: int) -> LocalStore:
    try:
        return LocalStore(clock=lambda: T0, max_keys=max_keys)  # type: ignore[call-arg]
    except TypeError:  # a store without a bound, to compare against
        return LocalStore(clock=lambda: T0)


def memory_per_key(algorithm: Algorithm, keys: int) -> float:
    r = rule(algorithm)
    s = store(keys + 1)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(keys):
        s.decide_now([make_check(r, "gw:", f"user-{i:08d}", None, 1)], T0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(s.slots) == keys
    return (after - before) / keys


def per_decision_us(checks: list[Check], s: LocalStore, rounds: int = 5) -> float:
    best = float("inf")
    decide = s.decide_now
    for _ in range(rounds):
        start = time.process_time()
        for c in checks:
            decide((c,), T0)
        best = min(best, time.process_time() - start)
    return best / len(checks) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=300_000)
    args = parser.parse_args()
    print(f"memory per key, {args.keys} keys decided once each:")
    for algorithm in Algorithm:
        print(f"  {algorithm.value:15s} {memory_per_key(algorithm, args.keys):7.0f} bytes")
    r = rule(Algorithm.TOKEN_BUCKET)
    hot = [make_check(r, "gw:", f"user-{i % 1000:08d}", None, 1) for i in range(args.decisions)]
    print(f"decide_now, token_bucket, {args.decisions} decisions (best of 5):")
    print(f"  hot set of 1,000 keys, bound 100,000:   "
          f"{per_decision_us(hot, store(100_000)):.3f} us")
    flood = [make_check(r, "gw:", f"user-{i:08d}", None, 1) for i in range(args.decisions)]
    full = store(10_000)
    print(f"  every key new, bound 10,000 (evicting): "
          f"{per_decision_us(flood, full, rounds=1):.3f} us "
          f"({len(full.slots)} keys held afterwards)")
    plain, lru = bookkeeping_ns()
    print(f"per key read: dict.get {plain:.0f} ns, OrderedDict.get + move_to_end {lru:.0f} ns "
          f"(+{lru - plain:.0f} ns)")


def bookkeeping_ns() -> tuple[float, float]:
    keys = [rule_keys("gw:", "user_requests", Algorithm.TOKEN_BUCKET, f"user-{i:08d}")[0]
            for i in range(100_000)]
    plain = dict.fromkeys(keys, 0)
    ordered = OrderedDict.fromkeys(keys, 0)
    probe = keys[::97] * 10

    def lru() -> None:
        get, move = ordered.get, ordered.move_to_end
        for k in probe:
            get(k)
            move(k)

    def dict_only() -> None:
        get = plain.get
        for k in probe:
            get(k)

    per = len(probe) * 1e-9
    return (min(timeit.repeat(dict_only, number=20, repeat=7)) / 20 / per,
            min(timeit.repeat(lru, number=20, repeat=7)) / 20 / per)


if __name__ == "__main__":
    main()
