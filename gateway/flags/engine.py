"""The flag stage: evaluates a route's flags and returns the headers for the upstream.

One engine per runtime (config). It merges the file's flags with the runtime overrides and
compiles them; when the overrides change (their `version` moves), the next request rebuilds
the compiled set, so a change applies to the very next request of every worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.config.model import Config, Flag, Route
from gateway.context import RequestContext
from gateway.flags.definition import check_flag_set, parse_definition
from gateway.flags.evaluate import CompiledFlag, Evaluation, evaluate, today_utc
from gateway.flags.plan import FlagPlan
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
        self.refresh()

    # ------------------------------------------------------------------ building
    def effective_flags(self) -> dict[str, Flag]:
        """The file's flags with every valid runtime override applied over them."""
        flags = dict(self.config.flags)
        for key, definition in self.overrides.definitions.items():
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
        self.compiled = {key: CompiledFlag(flag, self.prefix) for key, flag in self.flags.items()}
        plans: dict[str, FlagPlan] = {}
        for route in self.config.routes:
            keys = tuple(self.flags) if route.all_flags else route.flags
            shown = [self.compiled[k] for k in keys if k in self.compiled]
            if shown:
                plans[route.name] = FlagPlan(shown, self.compiled, self.summary,
                                             self.config.context)
        self._plans = plans

    # ------------------------------------------------------------------ serving
    def decide(self, route: Route, ctx: RequestContext) -> FlagResult | None:
        """The route's flags for this request (None when it has none)."""
        if self._version != self.overrides.version:
            self.refresh()
        plan = self._plans.get(route.name)
        return plan.from_context(ctx, time.time()) if plan is not None else None

    def decide_headers(self, route: Route, get: Callable[[str], str | None],
                       client_ip: str) -> FlagResult | None:
        """`decide` for a route that builds no context: the flags read the fields they need
        from `get` (the header lookup of a trusted peer, a lookup of nothing otherwise)."""
        if self._version != self.overrides.version:
            self.refresh()
        plan = self._plans.get(route.name)
        return (plan.from_headers(get, client_ip, self.config.environment, time.time())
                if plan is not None else None)

    def evaluate_one(self, key: str, ctx: RequestContext) -> Evaluation | None:
        """For the admin API: one flag for a given context (not counted in the metric)."""
        self.refresh()
        flag = self.compiled.get(key)
        if flag is None:
            return None
        return evaluate(flag, ctx, self.compiled, today_utc(time.time()), {})
