"""A route's rules compiled once at config load, and what a request needs from them (pure).

Most requests of a route repeat a few combinations of scope values (the same user, tenant
and address again and again), so the checks of a combination, their keys and what the stage
and the Redis store derive from them are built once and kept in a bounded cache per route
(`MAX_PREPARED` entries, oldest first out). A request then costs reading its scope values
and one dict lookup.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.model import Action, Config, HeaderStyle, RateLimitRule
from gateway.context import RequestContext
from gateway.ratelimit.headers import FieldMaker, Fields, field_maker
from gateway.ratelimit.rules import Check, key_bases, scope_value, tier_params

MAX_PREPARED = 4096  # combinations of scope values cached per route

# Scopes read straight from a context field: the whole key of a request is then one C call.
_FIELDS = {"user": "user_id", "tenant": "tenant_id", "ip": "client_ip", "api_key": "api_key"}
_MISSING = object()


class Prepared:
    """The checks of one route for one combination of scope values and tier."""

    __slots__ = ("_makers", "checks", "queue", "style", "wire")

    def __init__(self, checks: tuple[Check, ...], style: HeaderStyle) -> None:
        self.checks = checks
        self.style = style
        # The rule whose FIFO lane a held request waits in (`action: queue`).
        self.queue = next((c for c in checks if c.rule.action is Action.QUEUE and not c.soft),
                          None)
        self.wire: bytes | None = None  # the Redis store's encoding, memoised by the store
        # Made when a rule is first the most restrictive: a combination seen once (a new
        # user, a new address) pays only for the one it reports.
        self._makers: list[FieldMaker | None] = [None] * len(checks)

    def fields(self, i: int, remaining: int, wait_us: int) -> Fields:
        """The rate-limit response fields describing rule `i` (see `headers.field_maker`)."""
        maker = self._makers[i]
        if maker is None:
            maker = self._makers[i] = field_maker(self.style, self.checks[i])
        return maker(remaining, wait_us)


class RoutePlan:
    def __init__(self, rules: tuple[RateLimitRule, ...], cost: int, prefix: str,
                 style: HeaderStyle = HeaderStyle.IETF) -> None:
        self.rules = rules
        self.cost = cost
        self.prefix = prefix
        self.style = style
        self._tiers = frozenset(t for rule in rules for t in rule.tiers)
        fields = [_FIELDS.get(rule.scope.kind) for rule in rules if rule.scope.kind != "global"]
        self._values: Callable[[RequestContext], Any]
        if fields and all(fields):
            self._values = operator.attrgetter(*fields)  # type: ignore[arg-type]
        else:  # attribute scopes (or only global rules)
            scopes = [rule.scope for rule in rules]
            self._values = lambda ctx: tuple([scope_value(s, ctx) for s in scopes])
        self._cache: OrderedDict[Any, Prepared | None] = OrderedDict()  # O(1) oldest-out
        # (rule index, configured tier) -> key bases and parameters: worked out once.
        self._templates: dict[tuple[int, str | None], tuple[tuple[str, ...], int, int, int]] = {}

    def prepare(self, ctx: RequestContext) -> Prepared | None:
        """The checks for this request; None when no rule applies (no scope value present)."""
        tier = ctx.subscription_tier
        key = (tier if tier in self._tiers else None, self._values(ctx))
        prepared = self._cache.get(key, _MISSING)
        if prepared is _MISSING:
            checks = self.checks(ctx)
            prepared = Prepared(checks, self.style) if checks else None
            cache = self._cache
            if len(cache) >= MAX_PREPARED:
                cache.popitem(last=False)
            cache[key] = prepared
        return prepared  # type: ignore[return-value]

    def checks(self, ctx: RequestContext) -> tuple[Check, ...]:
        out = []
        tier = ctx.subscription_tier
        for i, rule in enumerate(self.rules):
            value = scope_value(rule.scope, ctx)
            if value is None:
                continue
            known = tier if tier in rule.tiers else None  # only configured tiers: bounded
            template = self._templates.get((i, known))
            if template is None:
                template = (key_bases(self.prefix, rule.name, rule.algorithm),
                            *tier_params(rule, known))
                self._templates[(i, known)] = template
            bases, limit, burst, window = template
            out.append(Check(rule, tuple(b + value for b in bases), limit, burst, window,
                             self.cost))
        return tuple(out)


def compile_plans(config: Config, prefix: str) -> Mapping[str, RoutePlan]:
    return {
        route.name: RoutePlan(tuple(config.rate_limits[n] for n in route.rate_limits),
                              route.cost, prefix, config.rate_limit_headers)
        for route in config.routes if route.rate_limits
    }
