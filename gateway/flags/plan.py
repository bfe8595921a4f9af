"""A route's flags made ready to serve one request after another.

`evaluate` (the reference, also used by the admin API) walks a flag with a memo dict per
request. A route's plan does the same work with less: each flag sits at a fixed position, its
prerequisites are positions too, and whatever cannot depend on the request (status, kill
switch, expiry, environment override) is settled once per day and environment instead of
per request. The outcomes of one request form a tuple; every distinct tuple is turned once
into what the upstream gets (one header per flag and the RFC 8941 summary, serialized) and
into one group of metric counters, so a request with several flags ends with one dict
lookup.

tests/unit/test_flag_plan.py checks plan and `evaluate` give the same outcomes, and count
the same evaluations, over generated flag sets and contexts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.context import RequestContext, remember
from gateway.flags.evaluate import IN_PROGRESS, CompiledFlag, Evaluation, today_utc
from gateway.metrictally import CounterGroup
from gateway.proxy import AddedFields
from gateway.stages import FlagResult

COMBOS_MAX = 4096  # distinct outcome tuples remembered per plan before starting afresh
_DAY = 86400.0


class FlagPlan:
    def __init__(self, shown: Sequence[CompiledFlag], compiled: Mapping[str, CompiledFlag],
                 summary: str | None) -> None:
        # The route's flags first, in its order; then every prerequisite they reach, which
        # is evaluated (and counted) only when a flag needs it, as `evaluate` does.
        order = list(shown)
        position = {flag.key: i for i, flag in enumerate(order)}
        for flag in order:  # grows while walked
            for key in flag.prerequisites:
                other = compiled.get(key)
                if other is not None and key not in position:
                    position[key] = len(order)
                    order.append(other)
        self.flags = tuple(order)
        self.shown = len(shown)
        # -1: a prerequisite missing from the flag set, which fails the flag (fail closed).
        self.prerequisites = tuple(tuple(position.get(key, -1) for key in flag.prerequisites)
                                   for flag in order)
        self.summary = summary
        self._since = self._until = 0.0  # the day settled for, in epoch seconds
        self._environment: str | None = None
        self._settled: tuple[Evaluation | None, ...] = ()
        self._start: list[Evaluation | None] = []
        self._open: tuple[int, ...] = ()
        self._combos: dict[tuple[Evaluation | None, ...], FlagResult] = {}

    def _settle(self, now: float, environment: str) -> None:
        today = today_utc(now)
        settled = tuple(flag.settled(today, environment) for flag in self.flags)
        self._settled = settled
        # A prerequisite outside the route starts undecided even when settled: it is
        # counted only if some flag reaches it.
        self._start = [s if i < self.shown else None for i, s in enumerate(settled)]
        self._open = tuple(i for i in range(self.shown) if settled[i] is None)
        self._combos = {}
        self._since, self._until = today * _DAY, (today + 1) * _DAY
        self._environment = environment

    def decide(self, ctx: RequestContext, now: float) -> FlagResult:
        """The route's flag headers for this request, and the evaluations to count."""
        if not self._since <= now < self._until or ctx.environment != self._environment:
            self._settle(now, ctx.environment)
        results = self._start.copy()
        for i in self._open:
            if results[i] is None:  # else decided already as another's prerequisite
                results[i] = self._decide(i, ctx, results)
        outcome = tuple(results)
        combo = self._combos.get(outcome)
        return combo if combo is not None else self._combine(outcome)

    def _decide(self, i: int, ctx: RequestContext, results: list[Evaluation | None]
                ) -> Evaluation:
        """CompiledFlag.decide, with prerequisites found by position in `results`."""
        settled = self._settled[i]
        if settled is not None:
            return settled
        flag = self.flags[i]
        results[i] = IN_PROGRESS  # a cycle (bad runtime state) reads as a falsy prerequisite
        try:
            if flag.tiers is not None and ctx.subscription_tier not in flag.tiers:
                return flag.r_tier
            for j in self.prerequisites[i]:
                if j < 0:
                    return flag.r_prereq
                other = results[j]
                if other is None:
                    other = results[j] = self._decide(j, ctx, results)
                if not other.value:
                    return flag.r_prereq
            return flag.targeted(ctx)
        except Exception:
            return flag.failed()

    def _combine(self, outcome: tuple[Evaluation | None, ...]) -> FlagResult:
        shown = outcome[:self.shown]
        pairs = [result.pair for result in shown if result is not None]
        members = [result.member for result in shown
                   if result is not None and result.member is not None]
        if self.summary and members:
            pairs.append((self.summary, ", ".join(members)))
        counters = [result.counter for result in outcome
                    if result is not None and result.counter is not None]
        return remember(self._combos, outcome,
                        FlagResult(AddedFields(pairs), CounterGroup(counters)), COMBOS_MAX)
