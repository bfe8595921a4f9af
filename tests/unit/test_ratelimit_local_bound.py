"""The in-process rate-limit store is bounded: `max_keys` keys, least recently used out."""

from __future__ import annotations

import random

from prometheus_client import REGISTRY

from gateway.config.model import Algorithm, RateLimitRule, Scope
from gateway.ratelimit.local import LocalStore
from gateway.ratelimit.rules import Check, make_check

T0 = 1_700_000_000_000_000
S = 1_000_000  # one second in microseconds


def check(user: str, limit: int = 1, algorithm: Algorithm = Algorithm.FIXED_WINDOW,
          name: str = "r") -> Check:
    rule = RateLimitRule(name, algorithm, Scope("user"), limit, 60.0)
    return make_check(rule, "t:", user, None, 1)


def evictions_metric() -> float:
    return REGISTRY.get_sample_value("gateway_ratelimit_local_evictions_total") or 0.0


def test_the_store_never_holds_more_than_max_keys() -> None:
    store = LocalStore(clock=lambda: T0, max_keys=100)
    before = evictions_metric()
    for i in range(1000):
        assert store.decide_now([check(f"u{i}")]).admitted
        assert len(store.slots) <= 100
    assert store.evictions == 900
    assert evictions_metric() - before == 900


def test_the_least_recently_used_key_goes_first_not_the_oldest_written() -> None:
    store = LocalStore(clock=lambda: T0, max_keys=3)
    for user in ("a", "b", "c"):
        store.decide_now([check(user, limit=5)])
    store.decide_now([check("a", limit=5)])  # a is now the most recently used
    store.decide_now([check("d", limit=5)])
    assert [k.rsplit(":", 1)[1] for k in store.slots] == ["c", "a", "d"]


def test_a_refused_decision_is_a_use_too() -> None:
    store = LocalStore(clock=lambda: T0, max_keys=2)
    assert store.decide_now([check("a")]).admitted
    assert store.decide_now([check("b")]).admitted
    assert not store.decide_now([check("a")]).admitted  # refused, but a was just used
    store.decide_now([check("c")])
    assert not store.decide_now([check("a")]).admitted  # a kept its state: b went instead


def test_an_evicted_key_starts_again_with_a_full_quota() -> None:
    """The price of the bound: a client whose key was forgotten is counted afresh."""
    store = LocalStore(clock=lambda: T0, max_keys=2)
    assert store.decide_now([check("a")]).admitted
    assert not store.decide_now([check("a")]).admitted
    store.decide_now([check("b")])
    store.decide_now([check("c")])  # a is the least recently used: forgotten
    assert store.decide_now([check("a")]).admitted


def test_a_smaller_bound_on_reload_evicts_at_once() -> None:
    store = LocalStore(clock=lambda: T0, max_keys=10)
    for i in range(10):
        store.decide_now([check(f"u{i}")])
    store.bound(4)
    assert [k.rsplit(":", 1)[1] for k in store.slots] == ["u6", "u7", "u8", "u9"]
    assert store.evictions == 6


def test_under_the_bound_decisions_are_those_of_an_unbounded_store() -> None:
    rng = random.Random(7)
    checks = [check(f"u{rng.randint(0, 9)}", limit=rng.randint(1, 4), algorithm=a, name=a.value)
              for a in Algorithm for _ in range(6)]
    keys = {c.keys[0] for c in checks}
    bounded = LocalStore(max_keys=len(keys))
    unbounded = LocalStore(max_keys=10**9)
    now = T0
    for _ in range(2000):
        now += rng.choice([0, 1, 1000, 250_000, 3_000_000])
        chosen = rng.sample(checks, rng.randint(1, 3))
        if len({c.keys[0] for c in chosen}) < len(chosen):
            continue
        assert bounded.decide_now(chosen, now) == unbounded.decide_now(chosen, now)
    assert bounded.evictions == 0


def test_a_decision_evicts_only_keys_it_did_not_touch() -> None:
    store = LocalStore(clock=lambda: T0, max_keys=3)
    for user in ("a", "b", "c"):
        store.decide_now([check(user, limit=5)])
    rules = [check("x", limit=5, name="p"), check("y", limit=5, name="q"),
             check("c", limit=5)]
    assert store.decide_now(rules).admitted
    assert sorted(k.rsplit(":", 1)[1] for k in store.slots) == ["c", "x", "y"]


def test_a_sliding_log_stays_compact_and_exact_over_a_long_run() -> None:
    """Entries leave from the front of one flat list: it must not grow with the run."""
    store = LocalStore(max_keys=10)
    c = check("a", limit=5, algorithm=Algorithm.SLIDING_WINDOW)._replace(window_us=1_000_000)
    admitted = []
    for step in range(2000):
        now = T0 + step * 50_000  # 20 attempts per second, 5 admitted per trailing second
        admitted.append((now, store.decide_now([c], now).admitted))
        log = store.slots[c.keys[0]].value
        assert len(log.entries) <= 4 * 5 * 2  # live pairs plus at most as many dead ones
        live = [t for t, ok in admitted if ok and t > now - 1_000_000]
        assert log.total == len(live) <= 5


def test_a_key_past_its_expiry_is_a_new_one_as_redis_would_have_forgotten_it() -> None:
    """The store forgets a key when its slot expires, as Redis does with the script's keys:
    a window lengthened on reload must not count entries the key outlived (Redis would have
    dropped them with the key), and the fresh state is written over the expired slot."""
    store = LocalStore(max_keys=10)
    short = check("a", limit=1, algorithm=Algorithm.SLIDING_WINDOW)._replace(window_us=S)
    long = short._replace(window_us=60 * S)
    assert store.decide_now([short], T0).admitted
    expires = store.slots[short.keys[0]].expires_us
    assert not store.decide_now([long], expires - 1).admitted  # still there: counted
    assert store.decide_now([long], expires).admitted  # expired: a fresh key
    assert store.slots[short.keys[0]].expires_us > expires
    assert not store.decide_now([long], expires + S).admitted  # the new entry is kept
