"""One suite, two stores: every algorithm against the in-process store and a real
redis-server running lua/ratelimit.lua, with a controlled clock, must decide identically.

The clock: the script takes an optional time in microseconds (ARGV[1]); production passes ""
and the script reads Redis TIME. A test-only override keeps one script (no test copy that
could drift) and lets the same virtual instants drive both stores, which pausing or faking
the Redis clock could not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis

from gateway.config.model import (
    Action,
    Algorithm,
    RateLimitRule,
    RedisSettings,
    Scope,
    WhenAbsent,
)
from gateway.context import RequestContext
from gateway.luascripts import load_script
from gateway.ratelimit.cluster_store import ClusterStore
from gateway.ratelimit.decision import NEVER, Decision, LimitStore
from gateway.ratelimit.local import LocalStore
from gateway.ratelimit.plan import RoutePlan
from gateway.ratelimit.redis_store import RedisStore
from gateway.ratelimit.rules import ALGORITHM_CODE, Check, make_check
from gateway.redisconn import RedisLink, RedisUnavailable
from tests.harness import RedisServer
from tests.rediscluster import RedisCluster

S = 1_000_000  # one second in microseconds
T0 = 1_700_000_000 * S  # a virtual epoch instant, aligned to whole seconds and minutes

ALL = list(Algorithm)


@pytest.fixture(params=["local", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    if request.param == "local":
        yield LocalStore(clock=lambda: T0)
        return
    async with remote_store(request, request.param) as remote:
        yield remote


@contextlib.asynccontextmanager
async def remote_store(request: pytest.FixtureRequest, kind: str
                       ) -> AsyncIterator[RedisStore | ClusterStore]:
    """A Redis store on a private redis-server, or a cluster store on the shared cluster."""
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        link = RedisLink(RedisSettings(url=cluster.url, cluster=True, timeout=2.0))
        remote: RedisStore | ClusterStore = ClusterStore(link)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        link = RedisLink(RedisSettings(url=server.url, timeout=2.0))
        remote = RedisStore(link)
    try:
        yield remote
    finally:
        await remote.close()
        await link.close()


def check(algorithm: Algorithm, limit: int, window: float, burst: int = 0, cost: int = 1,
          name: str = "r", value: str = "u1", **rule: Any) -> Check:
    r = RateLimitRule(name, algorithm, Scope("user"), limit, window, burst, **rule)
    return make_check(r, "t:", value, None, cost)


async def admitted(store: LimitStore, checks: Sequence[Check], at: int) -> bool:
    return (await store.decide(checks, at)).admitted


async def count(store: LimitStore, c: Check, at: int, n: int) -> int:
    return sum([await admitted(store, [c], at) for _ in range(n)])


# ---------------------------------------------------------------- shared semantics

@pytest.mark.parametrize("algorithm", ALL)
async def test_limit_plus_burst_at_one_instant(store: LimitStore, algorithm: Algorithm) -> None:
    c = check(algorithm, limit=10, window=60, burst=2)
    expected = 3 if algorithm is Algorithm.LEAKY_BUCKET else 12  # GCRA: burst+1 at once
    assert await count(store, c, T0, 20) == expected


@pytest.mark.parametrize("algorithm", ALL)
async def test_no_penalty_refused_request_consumes_nothing(store: LimitStore,
                                                           algorithm: Algorithm) -> None:
    burst = 9 if algorithm is Algorithm.LEAKY_BUCKET else 0
    a = check(algorithm, limit=10, window=60, burst=burst, name="a")
    b = check(algorithm, limit=5, window=60, burst=burst - 5 if burst else 0, name="b")
    results = [await admitted(store, [a, b], T0) for _ in range(8)]
    assert results == [True] * 5 + [False] * 3
    decision = await store.decide([a._replace(cost=0)], T0, commit=False)
    assert decision.results[0].remaining == 5
    assert await count(store, a, T0, 10) == 5


@pytest.mark.parametrize("algorithm", ALL)
async def test_cost_counts_units_and_oversized_cost_never_passes(
        store: LimitStore, algorithm: Algorithm) -> None:
    burst = 9 if algorithm is Algorithm.LEAKY_BUCKET else 0
    c = check(algorithm, limit=10, window=60, burst=burst, cost=4)
    assert await count(store, c, T0, 5) == 2
    huge = check(algorithm, limit=10, window=60, burst=burst, cost=11, value="u2")
    decision = await store.decide([huge], T0)
    assert not decision.admitted and decision.results[0].retry_us == NEVER


@pytest.mark.parametrize("algorithm", ALL)
async def test_retry_after_is_exactly_when_admission_happens(store: LimitStore,
                                                             algorithm: Algorithm) -> None:
    c = check(algorithm, limit=4, window=2)
    start = T0 + 300_000
    while await admitted(store, [c], start):
        pass
    retry = (await store.decide([c], start, commit=False)).results[0].retry_us
    assert retry > 0
    assert not await admitted(store, [c], start + retry - 1)
    assert await admitted(store, [c], start + retry)


# ---------------------------------------------------------------- per algorithm

async def test_sliding_window_exact_at_the_edge(store: LimitStore) -> None:
    c = check(Algorithm.SLIDING_WINDOW, limit=3, window=1)
    for offset in (0, 100_000, 200_000):
        assert await admitted(store, [c], T0 + offset)
    assert not await admitted(store, [c], T0 + 999_999)  # all three still inside
    assert await admitted(store, [c], T0 + S)  # the first left at exactly +1s
    assert not await admitted(store, [c], T0 + S + 99_999)
    assert await admitted(store, [c], T0 + S + 100_000)


async def test_fixed_window_resets_at_the_aligned_boundary(store: LimitStore) -> None:
    c = check(Algorithm.FIXED_WINDOW, limit=2, window=2)
    late = T0 + 2 * S - 1  # last microsecond of the window [T0, T0+2s)
    assert await count(store, c, late, 3) == 2
    decision = await store.decide([c], late, commit=False)
    assert decision.results[0].retry_us == 1
    assert await count(store, c, T0 + 2 * S, 3) == 2


async def test_token_bucket_refills_at_limit_per_window(store: LimitStore) -> None:
    c = check(Algorithm.TOKEN_BUCKET, limit=10, window=1, burst=5)  # 15 tokens, 1 per 100ms
    assert await count(store, c, T0, 20) == 15
    assert await count(store, c, T0 + 99_999, 2) == 0
    assert await count(store, c, T0 + 100_000, 2) == 1
    assert await count(store, c, T0 + 400_000, 5) == 3
    assert await count(store, c, T0 + 10 * S, 20) == 15


async def test_gcra_spaces_requests_without_burst(store: LimitStore) -> None:
    c = check(Algorithm.LEAKY_BUCKET, limit=5, window=1)  # one every 200ms
    assert await count(store, c, T0, 3) == 1
    decision = await store.decide([c], T0 + 50_000)
    assert not decision.admitted and decision.results[0].retry_us == 150_000
    assert await admitted(store, [c], T0 + 200_000)
    assert not await admitted(store, [c], T0 + 399_999)
    assert await admitted(store, [c], T0 + 400_000)


async def test_soft_rules_report_but_do_not_block(store: LimitStore) -> None:
    shadow = check(Algorithm.FIXED_WINDOW, limit=1, window=60, name="s", shadow=True)
    degrade = check(Algorithm.FIXED_WINDOW, limit=1, window=60, name="d",
                    action=Action.DEGRADE)
    hard = check(Algorithm.FIXED_WINDOW, limit=3, window=60, name="h")
    decisions = [await store.decide([shadow, degrade, hard], T0) for _ in range(4)]
    assert [d.admitted for d in decisions] == [True, True, True, False]
    assert [d.results[0].allowed for d in decisions] == [True, False, False, False]


# ---------------------------------------------------------------- when_absent: ip

def by_ip_plan() -> RoutePlan:
    user = RateLimitRule("per_user", Algorithm.SLIDING_WINDOW, Scope("user"), 3, 60.0,
                         when_absent=WhenAbsent.IP)
    return RoutePlan((user,), cost=1, prefix="t:")


async def test_when_absent_ip_counts_anonymous_requests_per_address(store: LimitStore) -> None:
    plan = by_ip_plan()
    anonymous = plan.prepare(RequestContext("192.0.2.7"))
    elsewhere = plan.prepare(RequestContext("192.0.2.8"))
    assert anonymous is not None and elsewhere is not None
    assert [await admitted(store, anonymous.checks, T0) for _ in range(4)] == \
        [True, True, True, False]
    assert await admitted(store, elsewhere.checks, T0)  # another address, its own count


async def test_when_absent_ip_never_shares_a_counter_with_a_user_named_like_the_address(
        store: LimitStore) -> None:
    plan = by_ip_plan()
    anonymous = plan.prepare(RequestContext("192.0.2.7"))
    impostor = plan.prepare(RequestContext("198.51.100.1", user_id="192.0.2.7"))
    assert anonymous is not None and impostor is not None
    assert await count(store, anonymous.checks[0], T0, 5) == 3
    assert await count(store, impostor.checks[0], T0, 5) == 3  # untouched by the address


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_both_stores_decide_when_absent_plans_identically(
        request: pytest.FixtureRequest, kind: str) -> None:
    rules = (
        RateLimitRule("u", Algorithm.SLIDING_WINDOW, Scope("user"), 4, 2.0, 1,
                      when_absent=WhenAbsent.IP),
        RateLimitRule("t", Algorithm.TOKEN_BUCKET, Scope("tenant"), 3, 1.0, 2),
        RateLimitRule("a", Algorithm.LEAKY_BUCKET, Scope("attribute", "plan"), 5, 1.0, 1,
                      when_absent=WhenAbsent.IP),
        RateLimitRule("g", Algorithm.FIXED_WINDOW, Scope("global"), 40, 1.0),
    )
    rng = random.Random(11)
    contexts = [RequestContext(f"192.0.2.{rng.randint(1, 3)}",
                               user_id=rng.choice([None, "u1", "192.0.2.1"]),
                               tenant_id=rng.choice([None, "acme"]),
                               attributes=rng.choice([{}, {"plan": "pro"}]))
                for _ in range(300)]
    steps = [rng.choice([0, 1, 50_000, 333_333]) for _ in contexts]

    async def run(store: LimitStore) -> list[Decision]:
        plan, now, out = RoutePlan(rules, cost=1, prefix="t:"), T0, []
        for ctx, step in zip(contexts, steps, strict=True):
            now += step
            prepared = plan.prepare(ctx)
            assert prepared is not None
            out.append(await store.decide(prepared.checks, now))
        return out

    async with remote_store(request, kind) as store:
        local, remote = await run(LocalStore()), await run(store)
    assert local == remote
    assert any(d.admitted for d in local) and not all(d.admitted for d in local)


# ---------------------------------------------------------------- identical decisions

async def replay(store: LimitStore, seed: int) -> list[Decision]:
    """A pseudo-random schedule over every algorithm, tiers of cost and several keys."""
    rng = random.Random(seed)
    rules = [check(a, limit=rng.randint(1, 7), window=rng.choice([0.5, 1, 3, 7]),
                   burst=rng.randint(0, 3), name=f"{a.value}", value=f"v{rng.randint(0, 2)}",
                   cost=rng.randint(1, 3)) for a in ALL for _ in range(2)]
    now, out = T0 + 123_457, []
    for _ in range(400):
        now += rng.choice([0, 0, 1, 999, 33_333, 140_000, 700_001])
        chosen = rng.sample(rules, rng.randint(1, 3))
        names = {c.rule.name + c.keys[0] for c in chosen}
        if len(names) < len(chosen):
            continue
        out.append(await store.decide(chosen, now))
    return out


async def test_both_stores_decide_identically(redis_server: RedisServer) -> None:
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=2.0))
    try:
        for seed in range(3):
            # The local store is exactly as large as the 12 keys the schedule can use: its
            # LRU bookkeeping runs on every decision and must change none of them.
            bounded = LocalStore(max_keys=12)
            local = await replay(bounded, seed)
            remote = await replay(RedisStore(link, batched=seed % 2 == 0), seed)
            assert local == remote
            assert bounded.evictions == 0 and len(bounded.slots) <= 12
            assert any(d.admitted for d in local) and not all(d.admitted for d in local)
            redis_server.cli("FLUSHALL")
    finally:
        await link.close()


async def test_the_cluster_store_decides_as_the_local_one_across_slots(
        redis_cluster: RedisCluster) -> None:
    """The schedule's rules count per three values, so most decisions span slots and run
    as reservations, a refused one returned: the outcome must be the single store's."""
    link = RedisLink(RedisSettings(url=redis_cluster.url, cluster=True, timeout=2.0))
    store = ClusterStore(link)
    try:
        for seed in range(3):
            local, remote = await replay(LocalStore(), seed), await replay(store, seed)
            assert local == remote
            assert any(d.admitted for d in local) and not all(d.admitted for d in local)
            redis_cluster.flushall()
    finally:
        await store.close()
        await link.close()


# ---------------------------------------------------------------- the pipelined connection

def _calls(server: RedisServer, command: str) -> int:
    """Calls of `command` since the last RESETSTAT. Redis < 7 counts subcommands under their
    parent (`script`, not `script|load`), so fall back to it there."""
    client = redis.Redis(port=server.port)
    try:
        stats = client.info("commandstats")
        entry = stats.get(f"cmdstat_{command}")
        if entry is None and "|" in command and not any("|" in k for k in stats):
            entry = stats.get(f"cmdstat_{command.split('|')[0]}")
        return int((entry or {}).get("calls", 0))
    finally:
        client.close()


@contextlib.asynccontextmanager
async def redis_store(server: RedisServer, timeout: float) -> AsyncIterator[RedisStore]:
    link = RedisLink(RedisSettings(url=server.url, timeout=timeout))
    store = RedisStore(link)
    try:
        yield store
    finally:
        await store.close()
        await link.close()


async def test_script_flush_reloads_once_and_every_waiting_decision_is_answered(
        redis_server: RedisServer) -> None:
    async with redis_store(redis_server, 2.0) as store:
        c = check(Algorithm.FIXED_WINDOW, limit=1000, window=60)
        assert await admitted(store, [c], T0)
        redis_server.cli("SCRIPT", "FLUSH")
        redis_server.cli("CONFIG", "RESETSTAT")
        decisions = await asyncio.gather(*(store.decide([c], T0) for _ in range(40)))
        assert all(d.admitted for d in decisions)
        assert _calls(redis_server, "script|load") == 1  # one reload for the whole batch
        assert _calls(redis_server, "evalsha") == 80  # each refused once, then run once
        client = redis.Redis(port=redis_server.port)
        try:
            assert struct.unpack("<dd", client.get(c.keys[0]))[1] == 41  # (window, units used)
        finally:
            client.close()


async def test_a_hung_redis_fails_by_the_deadline_and_a_fresh_connection_recovers(
        redis_server: RedisServer) -> None:
    # A second: the first call (connect, script load) and the recovery's new connection
    # must make it on a busy machine; the paused calls still end by it, inside the 5 s guard.
    async with redis_store(redis_server, 1.0) as store:
        c = check(Algorithm.TOKEN_BUCKET, limit=1000, window=60)
        assert await admitted(store, [c], T0)
        redis_server.pause()
        try:
            async with asyncio.timeout(5):  # without a deadline they would wait for Redis
                outcomes = await asyncio.gather(*(store.decide([c], T0) for _ in range(5)),
                                                return_exceptions=True)
            assert all(isinstance(o, RedisUnavailable) for o in outcomes)
        finally:
            redis_server.resume()
        store.link.breaker.success()  # no cool-down wait in this test
        # The old connection still holds the stale replies: a new one must answer.
        decision = await store.decide([c], T0 + S)
        assert decision.admitted and decision.results[0].remaining == 999


# ---------------------------------------------------------------- the sliding window's log

async def test_a_log_trimmed_in_batches_decides_as_the_in_process_log(
        redis_server: RedisServer) -> None:
    """lua/ratelimit.lua keeps entries that left the window until 32 of them and at least
    as many as the live ones pile up, and reads the live total from running totals: under a
    steady stream with mixed costs (entries leaving on most requests, trims now and then)
    every decision and every retry time must be the in-process store's, and the log never
    holds more than the live entries and one batch of the departed (32, or as many as are
    live)."""
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=2.0))
    local = LocalStore()
    remote = RedisStore(link)
    rng = random.Random(7)
    now = T0
    client = redis.Redis(port=redis_server.port)
    try:
        for _ in range(600):
            now += rng.choice([1, 7_000, 20_000, 31_000])
            c = check(Algorithm.SLIDING_WINDOW, limit=40, window=1, cost=rng.choice([1, 1, 2, 3]))
            assert await local.decide([c], now) == await remote.decide([c], now)
            times = _log_times(client.get(c.keys[0]))
            live = sum(1 for t in times if t > now - S)
            assert len(times) <= live + max(32, live)
        assert _calls(redis_server, "set") > 0  # batches were dropped (the log rewritten)
    finally:
        client.close()
        await link.close()


async def test_many_departures_and_far_retry_times_are_found_as_the_in_process_log_finds_them(
        redis_server: RedisServer) -> None:
    """The script reads the oldest 16 live entries at once and binary-searches past them:
    bursts of hundreds of entries leave at one instant, and costs of up to 150 units put
    the entry whose departure frees enough units deep in the log. Every decision, retry
    time included, must be the in-process store's."""
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=2.0))
    local = LocalStore()
    remote = RedisStore(link)
    rng = random.Random(11)
    now = T0
    try:
        for _ in range(900):
            now += rng.choice([1, 2, 50, 500, 3_000] * 10 + [150_000, 700_000])
            c = check(Algorithm.SLIDING_WINDOW, limit=300, window=1,
                      cost=rng.choice([1] * 8 + [2, 60, 150]))
            assert await local.decide([c], now) == await remote.decide([c], now)
    finally:
        await link.close()


def _log_times(log: bytes) -> list[float]:
    """The entries' times of a sliding window's log (lua/ratelimit.lua: 16-byte entries,
    then a 56-byte header whose fourth double is their number)."""
    count = int(struct.unpack_from("<7d", log, len(log) - 56)[3])
    assert len(log) == 16 * count + 56
    return [struct.unpack_from("<d", log, 16 * i)[0] for i in range(count)]


async def test_a_sliding_window_outlives_its_entries_by_a_window_and_at_most_two(
        redis_server: RedisServer) -> None:
    """Both keys' expiry is set once a window, to two windows ahead (plus the slack): after
    any admission they live at least one window plus the slack, at most two plus it. On
    Redis's own clock, with admissions spread over several windows."""
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=2.0))
    store = RedisStore(link)
    client = redis.Redis(port=redis_server.port)
    window, slack = 200, 1000  # milliseconds
    try:
        c = check(Algorithm.SLIDING_WINDOW, limit=1000, window=window / 1000)
        for _ in range(25):
            began = time.monotonic()
            assert (await store.decide([c])).admitted
            for key in c.keys:
                ttl = client.pttl(key)
                since = (time.monotonic() - began) * 1000
                assert window + slack - since - 2 <= ttl <= 2 * window + slack + 1
            await asyncio.sleep(0.03)
    finally:
        client.close()
        await link.close()


@pytest.mark.parametrize("algorithm", [Algorithm.TOKEN_BUCKET, Algorithm.LEAKY_BUCKET])
async def test_a_bucket_outlives_its_theoretical_arrival_time_by_one_to_two_slacks(
        redis_server: RedisServer, algorithm: Algorithm) -> None:
    """A GCRA key's expiry moves only when the key would not outlive its TAT by the slack,
    and then to two slacks past it: after every admission its TTL is the reset (the time
    until the TAT) plus one to two slacks. On Redis's own clock, the TAT running ahead of
    it and falling back."""
    link = RedisLink(RedisSettings(url=redis_server.url, timeout=2.0))
    store = RedisStore(link)
    client = redis.Redis(port=redis_server.port)
    slack = 1000  # milliseconds
    try:
        c = check(algorithm, limit=10, window=1, burst=40)
        for i in range(40):
            began = time.monotonic()
            decision = await store.decide([c])
            assert decision.admitted
            reset_ms = decision.results[0].reset_us / 1000
            ttl = client.pttl(c.keys[0])
            since = (time.monotonic() - began) * 1000
            assert reset_ms + slack - since - 2 <= ttl <= reset_ms + 2 * slack + 2, i
            if i % 10 == 9:
                await asyncio.sleep(0.3)  # the TAT falls back towards now
    finally:
        client.close()
        await link.close()


# ---------------------------------------------------------------- reserve and return

@pytest.mark.parametrize("algorithm", ALL)
def test_a_returned_reservation_leaves_the_counter_as_if_never_made(
        redis_server: RedisServer, algorithm: Algorithm) -> None:
    """Two counters see the same admissions; one also a reservation (ARGV[2] "2"), given
    back by lua/ratelimit_return.lua after later requests were admitted on top of it, and
    a second one made at an instant it shares with them, and a third that was the newest
    entry. From then on, at instants on both sides of the window's edge and of the
    entries' departures, both counters decide alike, refusals' reset and retry times
    included: a sliding window's running totals came back consistent."""
    decide, give_back = load_script("ratelimit").source, load_script("ratelimit_return").source
    client = redis.Redis(port=redis_server.port)
    with_, without = (check(algorithm, limit=5, window=10, burst=9, value=v)
                      for v in ("with", "without"))

    def run(c: Check, at: int, mode: bytes = b"1", cost: int = 1) -> list[int]:
        c = c._replace(cost=cost)
        return list(client.eval(decide, len(c.keys), *c.keys, str(at).encode(), mode,
                                c.script_args()))

    def back(at: int, cost: int) -> None:
        args = [str(v) for v in (ALGORITHM_CODE[algorithm], with_.limit, with_.window_us,
                                 cost)]
        assert client.eval(give_back, len(with_.keys), *with_.keys, str(at), *args) == 1

    try:
        for c in (with_, without):
            run(c, T0)
        first = run(with_, T0 + S, b"2", cost=2)
        assert first[0] == 1 and first[-1] == T0 + S  # admitted, the clock appended
        for c in (with_, without):
            run(c, T0 + 2 * S)
            run(c, T0 + 3 * S, cost=2)
        second = run(with_, T0 + 3 * S, b"2")
        assert second[0] == 1
        run(with_, T0 + 3 * S)
        run(without, T0 + 3 * S)
        back(T0 + S, 2)
        back(T0 + 3 * S, 1)
        third = run(with_, T0 + 3 * S + S // 2, b"2")  # the newest entry, then given back
        assert third[0] == 1
        back(T0 + 3 * S + S // 2, 1)
        for at in (4, 10, 11, 11.5, 12, 13, 13.5, 14, 20, 30):
            now = T0 + int(at * S)
            # A look asking for the whole quota: refused while anything counts, its reset
            # and retry times read from the entries left.
            assert run(with_, now, b"0", cost=14) == run(without, now, b"0", cost=14), at
            assert run(with_, now) == run(without, now), at
    finally:
        client.close()
