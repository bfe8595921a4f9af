"""The flag stage: evaluates a route's flags and returns the headers for the upstream.

One engine per runtime (config). It merges the file's flags with the runtime overrides and
compiles them; when the overrides change (their `version` moves), the next request rebuilds
the compiled set, so a change applies to the very next request of every worker.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from multidict import MultiMapping

from gateway.config.model import Config, Flag, Route
from gateway.context import RequestContext
from gateway.flagd.route import FlagdRoute, flagd_keys
from gateway.flags.definition import check_flag_set, flag_to_json, parse_definition
from gateway.flags.evaluate import CompiledFlag, Evaluation, evaluate, today_utc
from gateway.flags.plan import ContextDecider, FlagPlan, HeadersDecider
from gateway.flags.store import FlagOverrides
from gateway.stages import FlagResult

log = logging.getLogger("gateway.flags")


class FlagEngine:
    def __init__(self, config: Config, overrides: FlagOverrides | None = None) -> None:
        self.config = config
        self.overrides = overrides if overrides is not None else FlagOverrides()
        self.prefix = config.flag_headers.prefix
        self.summary = config.flag_headers.summary
        self._version = -1
        self.flags: dict[str, Flag] = {}
        self.compiled: dict[str, CompiledFlag] = {}
        self._plans: dict[str, FlagPlan] = {}
        # Per route with flags: its deciders (FlagStage), the plan's generated code once it
        # has some. They check by themselves that flags have not changed since.
        self.by_context: dict[str, ContextDecider] = {}
        self.by_headers: dict[str, HeadersDecider] = {}
        self.experiment_flags = frozenset(e.flag for e in config.experiments.values())
        self._with_flagd: set[str] = set()
        self.refresh()

    # ------------------------------------------------------------------ building
    def effective_flags(self) -> dict[str, Flag]:
        """The file's flags with every valid runtime override applied over them."""
        flags = dict(self.config.flags)
        for key, definition in self.overrides.definitions.items():
            if key in self.config.flagd_flags:
                # Stored before a flagd file defined the key: the file is its one source.
                log.error("flag %r: a runtime definition exists, but a flagd file defines "
                          "the flag; the file's applies", key)
                continue
            flag, errors = parse_definition(self.config, key, definition)
            if flag is None:
                # Valid where it was made, not under this config (say, an attribute this
                # gateway's context lacks): keep the file's definition here.
                log.error("flag %r: runtime definition does not fit this config, ignored: %s",
                          key, "; ".join(errors))
                continue
            flags[key] = flag
        problems = check_flag_set(self.config, flags)
        if problems:  # possible only through concurrent changes from several gateways
            log.error("flags: %s (the offending prerequisites fail closed)", "; ".join(problems))
        return flags

    def refresh(self) -> None:
        if self._version == self.overrides.version:
            return
        self._version = self.overrides.version
        self.flags = self.effective_flags()
        self.compiled = {key: CompiledFlag(flag, self.prefix, self.config.flag_bucketing)
                         for key, flag in self.flags.items()}
        plans: dict[str, FlagPlan] = {}
        with_flagd: set[str] = set()
        by_context: dict[str, ContextDecider] = {}
        by_headers: dict[str, HeadersDecider] = {}
        for route in self.config.routes:
            if not (route.flags or route.all_flags):
                continue
            keys = ((*self.flags, *self.config.flagd_flags) if route.all_flags
                    else route.flags)
            shown = [self.compiled[k] for k in keys if k in self.compiled]
            # Until its plan has generated code (or when it has no flag now), a route's
            # deciders are the engine's own: they rebuild first if flags changed meanwhile.
            by_context[route.name] = functools.partial(self._stale_context, route.name)
            by_headers[route.name] = functools.partial(self._stale_headers, route.name)
            if shown:
                plan = FlagPlan(shown, self.compiled, self.summary, self.config.context,
                                self.config.environment, self.overrides, self._version,
                                self.experiment_flags)
                plan.stale_context = by_context[route.name]
                plan.stale_headers = by_headers[route.name]
                plan.published = functools.partial(self._publish, route.name)
                plans[route.name] = plan
            flagd = flagd_keys(self.config, keys, self.compiled)
            if flagd:
                # The route's own plan decides first (through the engine, so a rebuilt plan
                # is seen), then its flagd flags are evaluated and their headers added.
                both = FlagdRoute(
                    self.config, flagd,
                    functools.partial(self._plan_decider, route.name, "context"),
                    functools.partial(self._plan_decider, route.name, "headers"))
                with_flagd.add(route.name)
                by_context[route.name] = both.from_context
                by_headers[route.name] = both.from_headers
        self._plans = plans
        self._with_flagd = with_flagd
        self.by_context, self.by_headers = by_context, by_headers

    def _plan_decider(self, name: str, kind: str) -> Any:
        """The route's own plan's current decider (its generated code once it has some)."""
        plan = self._plans.get(name)
        if plan is None:
            return None
        return plan.from_context if kind == "context" else plan.from_headers

    def _publish(self, name: str, plan: FlagPlan) -> None:
        """A plan generated its code: callers now get it directly (on a route with flagd
        flags, through the wrapper that adds them)."""
        if self._plans.get(name) is plan and name not in self._with_flagd:
            self.by_context[name] = plan.from_context
            self.by_headers[name] = plan.from_headers

    def _stale_context(self, name: str, ctx: RequestContext, now: float) -> FlagResult | None:
        self.refresh()
        plan = self._plans.get(name)
        return plan.decide(ctx, now) if plan is not None else None

    def _stale_headers(self, name: str, headers: MultiMapping[str], peer: str, trusted: bool,
                       now: float) -> FlagResult | None:
        self.refresh()
        plan = self._plans.get(name)
        return plan.decide_headers(headers, peer, trusted, now) if plan is not None else None

    # ------------------------------------------------------------------ serving
    def decide(self, route: Route, ctx: RequestContext) -> FlagResult | None:
        """The route's flags for this request (None when it has none); what the pipeline
        does through `by_context`."""
        decider = self.by_context.get(route.name)
        return decider(ctx, time.time()) if decider is not None else None

    def bucket_value(self, key: str, ctx: RequestContext) -> str | None:
        """What flag `key` buckets this request by (the experiment's unit), if it splits."""
        flag = self.compiled.get(key)
        return flag.bucket_value(ctx) if flag is not None else None

    async def set_kill_switch(self, key: str) -> None:
        """Kill a flag through the run-time store, as PATCH {"kill_switch": true} does:
        with Redis every gateway applies it within a second, and it survives restarts."""
        async with self.overrides.lock:
            self.refresh()
            definition = flag_to_json(self.flags[key])
            definition["kill_switch"] = True
            await self.overrides.put(key, definition)
        self.refresh()

    def evaluate_one(self, key: str, ctx: RequestContext) -> Evaluation | None:
        """For the admin API: one flag for a given context (not counted in the metric)."""
        self.refresh()
        flag = self.compiled.get(key)
        if flag is None:
            return None
        return evaluate(flag, ctx, self.compiled, today_utc(time.time()), {})
