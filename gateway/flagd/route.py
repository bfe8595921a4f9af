"""flagd-file flags on a route: evaluated per request beside the route's own flags.

A route's own flags run as generated code (gateway/flags/plan.py); flagd flags are
JsonLogic, so each request evaluates them with `evaluate_flagd` on a context shaped as an
OFREP client's would be (the context fields, `attributes`, and `targetingKey` = the user id),
so a service reading the same flag over OFREP with that context gets the same value. Their
headers join the route's: one `X-Flag-<key>` each, and a member in the summary. A flag whose
targeting serves no variant (OFREP's "use your code default") sends no header, as does one
whose evaluation failed; every evaluation is counted in gateway_flag_evaluations_total with
its OpenFeature reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from multidict import MultiMapping

from gateway import metrics
from gateway.config.model import Config
from gateway.context import RequestContext, build_context
from gateway.flagd.definition import FlagdFlag
from gateway.flagd.evaluate import evaluate_flagd
from gateway.flags.plan import ContextDecider, HeadersDecider
from gateway.flags.render import header_name, header_value, summary_member
from gateway.metrictally import CounterGroup
from gateway.proxy import AddedFields
from gateway.stages import FlagResult


def flagd_data(ctx: RequestContext) -> dict[str, Any]:
    """The context as flagd's JsonLogic reads it, as `OfrepContext.for_flagd` builds it."""
    data: dict[str, Any] = {name: value for name, value in zip(ctx._fields, ctx, strict=False)
                            if isinstance(value, str) and value}
    data["attributes"] = dict(ctx.attributes)
    if ctx.user_id:
        data["targetingKey"] = ctx.user_id
    return data


class FlagdRoute:
    """A route's deciders with its flagd flags added; `base_*` are the route's own (or None
    when it has none besides its flagd flags)."""

    def __init__(self, config: Config, keys: Sequence[str],
                 base_context: Callable[[], ContextDecider | None],
                 base_headers: Callable[[], HeadersDecider | None]) -> None:
        self.config = config
        self.flags: tuple[FlagdFlag, ...] = tuple(config.flagd_flags[k] for k in keys)
        self.prefix = config.flag_headers.prefix
        self.summary = config.flag_headers.summary
        self.names = {flag.key: header_name(self.prefix, flag.key) for flag in self.flags}
        self._base_context = base_context
        self._base_headers = base_headers

    def from_context(self, ctx: RequestContext, now: float) -> FlagResult | None:
        decide = self._base_context()
        return self._with_flagd(decide(ctx, now) if decide is not None else None, ctx, now)

    def from_headers(self, headers: MultiMapping[str], peer: str, trusted: bool,
                     now: float) -> FlagResult | None:
        decide = self._base_headers()
        base = decide(headers, peer, trusted, now) if decide is not None else None
        ctx = build_context(self.config.context, peer, headers,
                            environment=self.config.environment)[0]
        return self._with_flagd(base, ctx, now)

    def _with_flagd(self, base: FlagResult | None, ctx: RequestContext, now: float
                    ) -> FlagResult:
        data = flagd_data(ctx)
        pairs: list[tuple[str, str]] = []
        members: list[str] = []
        for flag in self.flags:
            outcome = evaluate_flagd(flag, data, self.config.flag_bucketing, now)
            metrics.FLAG_EVALUATIONS_BY(flag.key, outcome.variant or "", outcome.reason).inc()
            if not outcome.has_value:
                continue
            pairs.append((self.names[flag.key], header_value(outcome.value)))
            member = summary_member(flag.key, outcome.value)
            if member is not None:
                members.append(member)
        return _merged(base, pairs, members, self.summary)


def _merged(base: FlagResult | None, pairs: list[tuple[str, str]], members: list[str],
            summary: str | None) -> FlagResult:
    own: list[tuple[str, str]] = list(base.fields.pairs) if base is not None else []
    if summary and members:
        low = summary.lower()
        found = next((i for i, (name, _) in enumerate(own) if name.lower() == low), None)
        if found is None:
            own.append((summary, ", ".join(members)))
        else:
            own[found] = (own[found][0], ", ".join([own[found][1], *members]))
    fields = AddedFields([*own, *pairs])
    if base is None:
        return FlagResult(fields, _NOTHING_COUNTED)
    return FlagResult(fields, base.counted, base.split, base.units)


_NOTHING_COUNTED = CounterGroup([])


def flagd_keys(config: Config, keys: Sequence[str], gateway_flags: Mapping[str, object]
               ) -> list[str]:
    """The flagd-file flags among a route's flag keys (a key of the gateway's own wins)."""
    return [k for k in keys if k in config.flagd_flags and k not in gateway_flags]
