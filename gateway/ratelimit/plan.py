"""A route's rules compiled once at config load, and what a request needs from them (pure).

Most requests of a route repeat a few combinations of scope values (the same user, tenant
and address again and again), so the checks of a combination, their keys and what the stage
and the Redis store derive from them are built once and kept in a bounded cache per route
(`MAX_PREPARED` entries, oldest first out). A request then costs reading its scope values
and one dict lookup.

A sharded rule (`shards: N`) splits its units over N keys on different slots; a request
counts against one of them. The combination then keeps one `Prepared` per shard in a
`Rotation` and hands them out in turn, so each process spreads its requests evenly over
the shards (the accuracy bound this gives is in the README).
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.model import Action, Config, HeaderStyle, RateLimitRule, Scope, WhenAbsent
from gateway.context import RequestContext
from gateway.ratelimit.headers import FieldMaker, Fields, field_maker
from gateway.ratelimit.rules import (
    Check,
    hash_tag,
    key_bases,
    scope_value,
    shard_params,
    soft,
    tag_source,
    tier_params,
)

MAX_PREPARED = 4096  # combinations of scope values cached per route

# Scopes read straight from a context field: the whole key of a request is then one C call.
_FIELDS = {"user": "user_id", "tenant": "tenant_id", "ip": "client_ip", "api_key": "api_key"}
_MISSING = object()


class Prepared:
    """The checks of one route for one combination of scope values and tier."""

    __slots__ = ("_makers", "_taking", "absent", "checks", "counted", "lease", "lease_ttl",
                 "queue", "style", "wire")

    def __init__(self, checks: tuple[Check, ...], style: HeaderStyle,
                 absent: tuple[RateLimitRule, ...] = ()) -> None:
        self.checks = checks
        self.style = style
        # Blocking `when_absent: reject` rules whose value the request lacks: it is refused.
        self.absent = absent
        # The rule whose FIFO lane a held request waits in (`action: queue`).
        self.queue = next((c for c in checks if c.rule.action is Action.QUEUE and not c.soft),
                          None)
        # The Redis store's encoding, memoised by the store: one Command on one Redis, a
        # command per slot on a cluster.
        self.wire: Any = None
        # The stage's CounterGroup of the rules' "allowed" decision counters, made when the
        # combination is first admitted by every rule.
        self.counted: Any = None
        # Leases: only when every rule of the combination has one (a request spent from a
        # lease is decided by no rule in Redis), the smallest lease and ttl of them.
        leased = bool(checks) and all(c.rule.lease for c in checks) and not absent
        self.lease = min(c.rule.lease for c in checks) if leased else 0
        self.lease_ttl = min(c.rule.lease_ttl for c in checks) if leased else 0.0
        self._taking: Prepared | None = None
        # Made when a rule is first the most restrictive: a combination seen once (a new
        # user, a new address) pays only for the one it reports.
        self._makers: list[FieldMaker | None] = [None] * len(checks)

    def taking(self) -> Prepared:
        """The same checks, each costing `lease - 1` units more: the decision that takes a
        lease (the request's own cost, and the units spent locally after it)."""
        if self._taking is None:
            extra = self.lease - 1
            self._taking = Prepared(tuple(c._replace(cost=c.cost + extra)
                                          for c in self.checks), self.style)
        return self._taking

    def fields(self, i: int, remaining: int, wait_us: int) -> Fields:
        """The rate-limit response fields describing rule `i` (see `headers.field_maker`)."""
        maker = self._makers[i]
        if maker is None:
            maker = self._makers[i] = field_maker(self.style, self.checks[i])
        return maker(remaining, wait_us)


class Rotation(list[Prepared | None]):
    """The Prepared of each turn of one combination (the route's turn picks one), each made
    when first drawn: a combination seen a few times costs only the turns it drew."""

    __slots__ = ("absent",)

    def __init__(self, turns: int, absent: tuple[RateLimitRule, ...]) -> None:
        super().__init__([None] * turns)
        self.absent = absent


class RoutePlan:
    def __init__(self, rules: tuple[RateLimitRule, ...], cost: int, prefix: str,
                 style: HeaderStyle = HeaderStyle.IETF) -> None:
        self.rules = rules
        self.cost = cost
        self.prefix = prefix
        self.style = style
        self._tiers = frozenset(t for rule in rules for t in rule.tiers)
        scopes = [rule.scope for rule in rules if rule.scope.kind != "global"]
        if any(rule.when_absent is WhenAbsent.IP for rule in rules):
            scopes.append(Scope("ip"))  # the address is then part of what a request counts by
        fields = [_FIELDS.get(scope.kind) for scope in scopes]
        self._values: Callable[[RequestContext], Any]
        if fields and all(fields):
            self._values = operator.attrgetter(*fields)  # type: ignore[arg-type]
        else:  # attribute scopes (or only global rules)
            self._values = lambda ctx: tuple([scope_value(s, ctx) for s in scopes])
        self._cache: OrderedDict[Any, Prepared | Rotation | None] = OrderedDict()
        # (rule index, configured tier, by ip, shard) -> key bases and parameters.
        self._templates: dict[tuple[int, str | None, bool, int | None],
                              tuple[tuple[str, ...], int, int, int]] = {}
        # Every combination of the sharded rules' shards in turn, so each rule's shards get
        # requests evenly (the config keeps this least common multiple small).
        self._turns = math.lcm(*(rule.shards for rule in rules))
        # One turn per route, not per combination: requests of many users, each seen a few
        # times, still go round every shard of a global rule.
        self._turn = 0

    def prepare(self, ctx: RequestContext) -> Prepared | None:
        """The checks for this request; None when no rule applies (no scope value present)."""
        tier = ctx.subscription_tier
        key = (tier if tier in self._tiers else None, self._values(ctx))
        prepared = self._cache.get(key, _MISSING)
        if prepared is _MISSING:
            prepared = self._build(ctx)
            cache = self._cache
            if len(cache) >= MAX_PREPARED:
                cache.popitem(last=False)
            cache[key] = prepared
        if type(prepared) is Rotation:
            self._turn = turn = (self._turn + 1) % self._turns
            drawn = prepared[turn]
            if drawn is None:
                drawn = prepared[turn] = Prepared(self.checks(ctx, turn), self.style,
                                                  prepared.absent)
            return drawn
        return prepared  # type: ignore[return-value]

    def _build(self, ctx: RequestContext) -> Prepared | Rotation | None:
        absent = self.refusing(ctx)
        checks = self.checks(ctx)
        if not checks and not absent:
            return None
        if self._turns > 1 and checks:
            return Rotation(self._turns, absent)
        return Prepared(checks, self.style, absent)

    def checks(self, ctx: RequestContext, turn: int = 0) -> tuple[Check, ...]:
        """The checks of the rules that apply: those whose scope value the request carries,
        and `when_absent: ip` rules counting per address for want of it. A sharded rule
        counts against shard `turn` modulo its shards."""
        out = []
        tier = ctx.subscription_tier
        for i, rule in enumerate(self.rules):
            value = scope_value(rule.scope, ctx)
            by_ip = False
            if value is None:
                if rule.when_absent is not WhenAbsent.IP or not ctx.client_ip:
                    continue
                value, by_ip = ctx.client_ip, True
            known = tier if tier in rule.tiers else None  # only configured tiers: bounded
            shard = turn % rule.shards if rule.shards > 1 else None
            template = self._templates.get((i, known, by_ip, shard))
            if template is None:
                limit, burst, window = tier_params(rule, known)
                if shard is not None:
                    limit, burst = shard_params(rule.algorithm, limit, burst, rule.shards,
                                                shard)
                template = (key_bases(rule.name, rule.algorithm, by_ip, shard), limit, burst,
                            window)
                self._templates[(i, known, by_ip, shard)] = template
            bases, limit, burst, window = template
            head = hash_tag(self.prefix, tag_source(rule.name, value, shard))
            out.append(Check(rule, tuple(head + b + value for b in bases), limit, burst,
                             window, self.cost))
        return tuple(out)

    def refusing(self, ctx: RequestContext) -> tuple[RateLimitRule, ...]:
        """The `when_absent: reject` rules whose scope value the request lacks. A shadow or
        degrade rule never refuses a request, so for those reject acts as skip."""
        return tuple(rule for rule in self.rules
                     if rule.when_absent is WhenAbsent.REJECT and not soft(rule)
                     and scope_value(rule.scope, ctx) is None)


def compile_plans(config: Config, prefix: str) -> Mapping[str, RoutePlan]:
    return {
        route.name: RoutePlan(tuple(config.rate_limits[n] for n in route.rate_limits),
                              route.cost, prefix, config.rate_limit_headers)
        for route in config.routes if route.rate_limits
    }
