"""The rate-limit stage: decide, then hold, refuse, degrade or admit.

Actions when a blocking rule refuses:
* reject: 429 problem+json with `violated-policies` and `Retry-After`.
* delay: if the longest `retry_after` of the refusing rules fits in `max_wait`, sleep exactly
  that long and decide again (re-decide rather than reserve: a reservation would need a
  future slot in every algorithm, and re-deciding can never over-admit). Capacity taken
  meanwhile by another process means another sleep, still bounded by `max_wait` counted
  from arrival; past it, reject.
* queue: wait in the bounded FIFO lane of the rule key (`queue_size`, see `lanes`), the head
  re-deciding as capacity frees, for up to `max_wait`; then reject. A new request never
  overtakes a non-empty lane. Lanes are per process.
Held requests hold no upstream connection (the stage runs before the upstream) and are
released when the client goes away: the server cancels the handler, and the `finally`
leaves the lane.
* degrade (and shadow rules) never block: see `Check.soft`.
A request lacking the scope value of a blocking `when_absent: reject` rule is refused with
403 before anything is decided (see `_refuse_unidentified`), so it consumes nothing.

Redis trouble (`RedisUnavailable`: deadline, refused, breaker open): failure_mode `open`
admits, `closed` answers 503, `local` decides with the in-process store meanwhile; the
admissions it makes count as outcome `degraded`.

Leases (`lease: N` on every rule of a request, Redis only): the decision that finds no
lease takes the request's cost plus N-1 units in Redis; the process then admits the same
combination of scope values from those units, without Redis, until they are spent or
`lease_ttl` has passed (what is left then lapses: never returned, never over-admitted).
Redis counted the units when they were taken, so a unit spent later can leave Redis's window
before its request's would have: at most N-1 per process and key more than the limit in
any window. When fewer than N units are left in Redis, the request's own cost is decided
alone (a second round trip, only then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.config.model import (
    Action,
    Config,
    FailureMode,
    HeaderStyle,
    RateLimitRule,
    Route,
)
from gateway.context import RequestContext, hash_api_key
from gateway.metrictally import TALLY, CounterGroup
from gateway.problem import problem
from gateway.ratelimit.decision import NEVER, Decision, LimitStore, RuleResult
from gateway.ratelimit.headers import most_restrictive, rate_limit_fields, retry_after
from gateway.ratelimit.lanes import Lanes
from gateway.ratelimit.local import LocalStore
from gateway.ratelimit.plan import Prepared, RoutePlan, compile_plans
from gateway.ratelimit.rules import GLOBAL_VALUE, Check, make_check, tier_params
from gateway.redisconn import RedisUnavailable
from gateway.stages import ADMIT, LimitVerdict

OUTCOMES = ("allowed", "limited", "shadow_limited", "delayed", "queued", "degraded",
            "failed_open", "failed_closed")
_HELD = {Action.DELAY: "delayed", Action.QUEUE: "queued"}
_new = tuple.__new__
MAX_LEASES = 10_000  # combinations holding a lease in one process


class Lease:
    """Units a process took in Redis beyond a request's cost, and until when it may spend
    them; `results`: the decision that took them, for the response's rate-limit fields."""

    __slots__ = ("results", "units", "until")

    def __init__(self, units: int, until: float, results: tuple[RuleResult, ...]) -> None:
        self.units = units
        self.until = until
        self.results = results


class RateLimiter:
    """`RateLimitStage` for one configuration; the stores are long-lived services."""

    def __init__(self, config: Config, local: LocalStore, remote: LimitStore | None) -> None:
        self.rules: Mapping[str, RateLimitRule] = config.rate_limits
        self.prefix = config.redis.key_prefix if config.redis is not None else ""
        self.plans: Mapping[str, RoutePlan] = compile_plans(config, self.prefix)
        self.style: HeaderStyle = config.rate_limit_headers
        self.failure_mode = config.redis.failure_mode if config.redis else FailureMode.LOCAL
        self.local = local
        self.remote = remote
        self.lanes = Lanes()
        self._counters = {(rule, outcome): metrics.RATELIMIT_DECISIONS.labels(rule, outcome)
                          for rule in config.rate_limits for outcome in OUTCOMES}
        self._allowed = {rule: self._counters[(rule, "allowed")] for rule in config.rate_limits}
        self._leases: dict[Prepared, Lease] = {}

    # ------------------------------------------------------------------ the stage
    async def check(self, route: Route, ctx: RequestContext, request: web.BaseRequest,
                    request_id: str) -> LimitVerdict:
        plan = self.plans.get(route.name)
        prepared = plan.prepare(ctx) if plan is not None else None
        if prepared is None:  # no rule of the route applies to this request
            return ADMIT
        if prepared.absent:
            return _refuse_unidentified(prepared.absent, request_id)
        queue = prepared.queue
        # A lease admits only what Redis would not hold: never past a waiting lane.
        if prepared.lease and self._leases and (queue is None or
                                                not self.lanes.busy(queue.keys[0])):
            spent = self._spend(prepared)
            if spent is not None:
                return spent
        checks, queue = prepared.checks, prepared.queue
        # The loop's clock only for a request that waits (asked then: on Python 3.11 each
        # get_running_loop() is a getpid system call).
        deadline: float | None = None
        held: Action | None = None
        turn: asyncio.Future[None] | None = None
        try:
            if queue is not None and self.lanes.busy(queue.keys[0]):
                # FIFO: a newcomer waits behind a non-empty lane instead of overtaking it.
                deadline = asyncio.get_running_loop().time() + queue.rule.max_wait
                turn = await self._wait_turn(queue, deadline)
                if turn is None:
                    return self._timed_out(checks, request_id)
                held = Action.QUEUE
            while True:
                try:
                    decision, fallback = await self._decide(prepared)
                except RedisUnavailable:
                    return self._unavailable(checks, request_id)
                if decision.admitted:
                    return self._admit(prepared, decision.results, held, fallback)
                blocking = [(c, r) for c, r in zip(checks, decision.results, strict=True)
                            if not r.allowed and not c.soft]
                hold = _hold_action([c for c, _ in blocking])
                if hold is None or any(r.retry_us == NEVER for _, r in blocking):
                    return self._reject(checks, decision.results, request_id)
                now = asyncio.get_running_loop().time()
                if deadline is None:
                    deadline = now + min(c.rule.max_wait for c, _ in blocking)
                wait = max(r.retry_us for _, r in blocking) / 1_000_000
                if now + wait > deadline:
                    return self._reject(checks, decision.results, request_id)
                held = held or hold
                if hold is Action.QUEUE and turn is None:
                    assert queue is not None
                    turn = await self._wait_turn(queue, deadline)
                    if turn is None:
                        return self._reject(checks, decision.results, request_id)
                    continue  # our turn: decide again at once
                await asyncio.sleep(wait)
        finally:
            if turn is not None and queue is not None:
                self.lanes.leave(queue.keys[0], turn)

    async def _wait_turn(self, queue: Check, deadline: float) -> asyncio.Future[None] | None:
        turn = self.lanes.join(queue.keys[0], queue.rule.queue_size)
        if turn is None:
            return None
        try:
            async with asyncio.timeout_at(deadline):
                await turn
        except TimeoutError:
            self.lanes.leave(queue.keys[0], turn)
            return None
        return turn

    async def _decide(self, prepared: Prepared) -> tuple[Decision, bool]:
        if self.remote is None:
            return self.local.decide_now(prepared.checks), False
        try:
            if prepared.lease:
                taken = await self._take(prepared)
                if taken is not None:
                    return taken, False
            return await self.remote.decide_prepared(prepared), False
        except RedisUnavailable:
            if self.failure_mode is not FailureMode.LOCAL:
                raise
            return self.local.decide_now(prepared.checks), True

    # ------------------------------------------------------------------ leases
    async def _take(self, prepared: Prepared) -> Decision | None:
        """Decide the request with a lease's worth of units; None if they do not fit."""
        assert self.remote is not None
        decision = await self.remote.decide_prepared(prepared.taking())
        if not decision.admitted:
            return None
        held = prepared.lease - 1
        leases = self._leases
        now = asyncio.get_running_loop().time()
        if len(leases) >= MAX_LEASES:  # bound it: drop what has lapsed, else the oldest
            for stale in [p for p, lease in leases.items() if lease.until <= now] or \
                    [next(iter(leases))]:
                del leases[stale]
        leases[prepared] = Lease(held, now + prepared.lease_ttl, decision.results)
        # The client may still spend what this process holds for it.
        return Decision(True, tuple([r._replace(remaining=r.remaining + held)
                                     for r in decision.results]))

    def _spend(self, prepared: Prepared) -> LimitVerdict | None:
        """Admit from the combination's lease, if it holds the cost and has not lapsed."""
        lease = self._leases.get(prepared)
        if lease is None:
            return None
        cost = prepared.checks[0].cost
        if lease.units < cost or asyncio.get_running_loop().time() >= lease.until:
            del self._leases[prepared]  # what is left lapses
            return None
        lease.units -= cost
        return self._admit(prepared, tuple([r._replace(remaining=r.remaining + lease.units)
                                            for r in lease.results]), None, False)

    # ------------------------------------------------------------------ verdicts
    def _count(self, rule: str, outcome: str) -> None:
        self._counters[(rule, outcome)].inc()

    def _fields(self, checks: Sequence[Check], results: Sequence[RuleResult]
                ) -> tuple[tuple[str, str], ...]:
        i = most_restrictive(checks, results)
        return tuple(rate_limit_fields(self.style, checks[i], results[i]))

    def _admit(self, prepared: Prepared, results: Sequence[RuleResult],
               held: Action | None, fallback: bool) -> LimitVerdict:
        checks = prepared.checks
        if held is None and not fallback:
            # Every request pays this: every rule admitted at once. The most restrictive rule
            # (see `most_restrictive`) is then the one with the fewest units left, the
            # longest refill breaking ties, the first rule breaking those.
            i, best = 0, results[0]
            for j, r in enumerate(results):
                if not r.allowed:
                    break
                if r.remaining < best.remaining or (
                        r.remaining == best.remaining and r.reset_us > best.reset_us):
                    i, best = j, r
            else:
                # Counted as the flags count theirs: one note for all the rules, applied
                # with the request's other metrics (gateway/metrictally.py).
                group = prepared.counted
                if group is None:
                    group = prepared.counted = CounterGroup(
                        [self._allowed[c.rule.name] for c in checks])
                TALLY.noted.append(group)
                # tuple.__new__ with every member: the quickest tuple to make (the
                # NamedTuple's own __new__ is a Python function).
                return _new(LimitVerdict, (None, prepared.fields(i, best.remaining,
                                                                best.reset_us),
                                           (), None, "allowed"))
        degraded: list[Check] = []
        outcome = _HELD[held] if held is not None else "allowed"
        for c, r in zip(checks, results, strict=True):
            if r.allowed:
                rule_outcome = "degraded" if fallback else (
                    _HELD[held] if held is not None and c.rule.action is held else "allowed")
            elif c.rule.shadow:
                rule_outcome = "shadow_limited"
            else:
                rule_outcome = "degraded"
                degraded.append(c)
            self._count(c.rule.name, rule_outcome)
        if degraded:
            outcome = "degraded"
        elif fallback:
            outcome = "local"
        names = ", ".join(c.rule.name for c in degraded)
        upstream = next((c.rule.degrade_upstream for c in degraded if c.rule.degrade_upstream),
                        None)
        return LimitVerdict(
            response_headers=self._fields(checks, results),
            upstream_headers=(("X-RateLimit-Degraded", names),) if degraded else (),
            upstream=upstream,
            outcome=outcome,
        )

    def _reject(self, checks: Sequence[Check], results: Sequence[RuleResult],
                request_id: str) -> LimitVerdict:
        violated = []
        for c, r in zip(checks, results, strict=True):
            if r.allowed:
                self._count(c.rule.name, "allowed")
            elif c.rule.shadow:
                self._count(c.rule.name, "shadow_limited")
            else:
                self._count(c.rule.name, "limited")
                if not c.soft:
                    violated.append(c.rule.name)
        seconds = retry_after(checks, results)
        extra: dict[str, Any] = {"violated-policies": violated}
        refusal = problem(
            429, f"rate limit exceeded ({', '.join(violated)}); retry in {seconds} s",
            request_id, headers={"Retry-After": str(seconds)},
            **extra,
        )
        return LimitVerdict(refusal=refusal, response_headers=self._fields(checks, results),
                            outcome="limited")

    def _timed_out(self, checks: Sequence[Check], request_id: str) -> LimitVerdict:
        """Waited in a full or slow lane without deciding: refuse with the queue rule."""
        queue = next(c for c in checks if c.rule.action is Action.QUEUE)
        result = RuleResult(False, 0, queue.window_us, max(1, int(queue.rule.max_wait * 1e6)))
        return self._reject([queue], [result], request_id)

    def _unavailable(self, checks: Sequence[Check], request_id: str) -> LimitVerdict:
        if self.failure_mode is FailureMode.CLOSED:
            for c in checks:
                self._count(c.rule.name, "failed_closed")
            refusal = problem(503, "rate limits cannot be checked right now "
                              "(Redis is unavailable); try again shortly", request_id,
                              headers={"Retry-After": "1"})
            return LimitVerdict(refusal=refusal, outcome="failed_closed")
        for c in checks:
            self._count(c.rule.name, "failed_open")
        return LimitVerdict(outcome="failed_open")

    # ------------------------------------------------------------------ admin API
    def admin_checks(self, rule_name: str, key: str, tier: str | None = None,
                     by_ip: bool = False) -> list[Check]:
        """The checks of `rule_name` for scope value `key` (a raw API key is hashed), one
        per shard of a sharded rule; `by_ip`: its `when_absent: ip` counter of address
        `key`."""
        rule = self.rules.get(rule_name)
        if rule is None:
            raise KeyError(f"unknown rate-limit rule {rule_name!r}")
        value = GLOBAL_VALUE if rule.scope.kind == "global" else key
        if rule.scope.kind == "api_key" and not by_ip:
            value = hash_api_key(key)
        shards: list[int | None] = list(range(rule.shards)) if rule.shards > 1 else [None]
        return [make_check(rule, self.prefix, value, tier, 0, by_ip, shard) for shard in shards]

    async def state(self, rule_name: str, key: str, tier: str | None = None,
                    by_ip: bool = False) -> dict[str, Any]:
        """`GET /admin/ratelimits/{rule}?key=...`: what the rule has left for this key (a
        sharded rule: what its shards have left together)."""
        checks = self.admin_checks(rule_name, key, tier, by_ip)
        store: LimitStore = self.remote if self.remote is not None else self.local
        results = [(await store.decide([c], commit=False)).results[0] for c in checks]
        check = checks[0]
        limit, burst, _ = tier_params(check.rule, tier)
        return {
            "rule": rule_name, "key": key, "by_ip": by_ip,
            "algorithm": check.rule.algorithm.value,
            "scope": str(check.rule.scope), "limit": limit, "burst": burst,
            "window": check.window_us / 1_000_000, "quota": limit + burst,
            "remaining": sum(r.remaining for r in results),
            "reset_seconds": max(r.reset_us for r in results) / 1_000_000,
            "store": "redis" if self.remote is not None else "local",
        }

    async def reset(self, rule_name: str, key: str, by_ip: bool = False) -> None:
        """`DELETE /admin/ratelimits/{rule}?key=...`: forget the key's state (both stores)."""
        keys = [k for c in self.admin_checks(rule_name, key, by_ip=by_ip) for k in c.keys]
        await self.local.reset(keys)
        if self.remote is not None:
            await self.remote.reset(keys)


# What a request lacks when a rule of this scope kind finds no value (the context field).
_MISSING_FIELD = {"user": "user_id", "tenant": "tenant_id", "api_key": "api_key"}


def _refuse_unidentified(rules: Sequence[RateLimitRule], request_id: str) -> LimitVerdict:
    """`when_absent: reject`: 403. No limit was reached, so not 429; the request is well
    formed, so not 400; and 401 would need a WWW-Authenticate challenge (RFC 9110 §15.5.2)
    naming a scheme the gateway does not run: identity comes from headers an authenticating
    proxy sets. 403 (§15.5.4) says the server understood and refuses, and repeating the
    request unchanged will not help."""
    missing = [_MISSING_FIELD.get(r.scope.kind) or f"attributes.{r.scope.attribute}"
               for r in rules]
    names = ", ".join(r.name for r in rules)
    refusal = problem(
        403, f"this route counts requests per {', '.join(str(r.scope) for r in rules)} "
        f"({names}) and refuses requests without one; this request carries no "
        f"{' and no '.join(missing)}", request_id, policies=[r.name for r in rules],
        missing=missing)
    return LimitVerdict(refusal=refusal, outcome="unidentified")


def _hold_action(blocking: Sequence[Check]) -> Action | None:
    """Queue if any refusing rule queues, else delay; None if any of them rejects."""
    actions = {c.rule.action for c in blocking}
    if not actions or actions - {Action.DELAY, Action.QUEUE}:
        return None
    return Action.QUEUE if Action.QUEUE in actions else Action.DELAY

