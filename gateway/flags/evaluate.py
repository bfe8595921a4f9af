"""Flag evaluation: a pure function of (flag, the other flags, context, environment, today).

`CompiledFlag` does at build time all that does not depend on the request: the outcome of
every step (value, variant, reason, header text, summary member and metric child) is made
once, targeting rules become closures, rollout weights become hash thresholds. Evaluating is
then a few comparisons and at most one murmur3 hash, with no allocation.

Order: status not active -> DISABLED; kill_switch -> KILLED; past `expires` ->
EXPIRED; `environments` names the current environment -> ENVIRONMENT_OVERRIDE; `tiers` given
and the request's tier not in it -> TIER_NOT_ELIGIBLE; a prerequisite not truthy for this
request -> PREREQUISITE_FAILED; targeting given and no rule matches -> TARGETING_NOT_MATCHED;
then boolean/percentage with a rollout -> ROLLOUT or ROLLOUT_EXCLUDED, multivariate -> SPLIT,
otherwise STATIC.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import mmh3

from gateway import metrics
from gateway.config.model import Bucketing, Flag, FlagStatus, FlagType
from gateway.context import RequestContext
from gateway.flagd.operators import v3_shorthand_input
from gateway.flags import render
from gateway.flags.operators import Getter, Test, attribute_getter, predicate, rule_test

log = logging.getLogger("gateway.flags")

_EPOCH = dt.date(1970, 1, 1)
HASH_SPACE = 1 << 32


class Reason(enum.StrEnum):
    STATIC = "STATIC"
    ROLLOUT = "ROLLOUT"
    SPLIT = "SPLIT"
    TARGETING_NOT_MATCHED = "TARGETING_NOT_MATCHED"
    ROLLOUT_EXCLUDED = "ROLLOUT_EXCLUDED"
    DISABLED = "DISABLED"
    KILLED = "KILLED"
    EXPIRED = "EXPIRED"
    ENVIRONMENT_OVERRIDE = "ENVIRONMENT_OVERRIDE"
    TIER_NOT_ELIGIBLE = "TIER_NOT_ELIGIBLE"
    PREREQUISITE_FAILED = "PREREQUISITE_FAILED"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True, eq=False)
class Evaluation:
    """One outcome of one flag, with everything a request needs from it precomputed."""

    flag: str
    value: Any
    variant: str
    reason: Reason
    header: str = ""  # the per-flag header's value
    pair: tuple[str, str] = ("", "")  # (header name, header) as the upstream request gets it
    member: str | None = None  # `key=item` in the summary, None when it has no RFC 8941 form
    counter: Any = field(default=None, repr=False)  # gateway_flag_evaluations_total child


def epoch_day(day: dt.date) -> int:
    return (day - _EPOCH).days


def today_utc(now: float) -> int:
    """Days since 1970-01-01 in UTC: `expires` compares against this."""
    return int(now // 86400)


def murmur3_32(text: str) -> int:
    """murmur3 x86 32-bit, seed 0, of the UTF-8 bytes, unsigned: flagd's StringSum32."""
    return mmh3.hash(text, 0, False)  # (key, seed, signed)


def thresholds(weights: list[Fraction] | list[int]) -> tuple[int, ...]:
    """Hash thresholds equivalent to flagd fractional v2.

    flagd: bucket = (hash * total) >> 32, first variant i with bucket < cumulative_i. Since
    cumulative_i is whole, bucket < c  <=>  hash * total < c * 2^32  <=>  hash < ceil(c * 2^32
    / total); so variant i wins exactly when hash < threshold_i, and `bisect_right` over the
    thresholds finds it without a multiplication per request. Fractional rollouts (12.5%)
    extend the same inequality.
    """
    total = sum(weights)
    out: list[int] = []
    running: Fraction | int = 0
    for weight in weights:
        running += weight
        out.append(math.ceil(Fraction(running) * HASH_SPACE / Fraction(total)))
    return tuple(out)


def bucket_index(cuts: tuple[int, ...], hash_value: int) -> int:
    return bisect_right(cuts, hash_value)


def _default_bucket_value(ctx: RequestContext) -> str | None:
    # bucket_by defaults to user_id, then tenant_id, then the client IP.
    return ctx.user_id or ctx.tenant_id or ctx.client_ip or None


class CompiledFlag:
    """A flag ready to evaluate; built once per flag set, shared by every request."""

    __slots__ = (
        "active",
        "bucket_value",
        "cuts",
        "environments",
        "expires_day",
        "flag",
        "header_name",
        "key",
        "killed",
        "outcomes",
        "prerequisites",
        "r_disabled",
        "r_error",
        "r_excluded",
        "r_expired",
        "r_killed",
        "r_prereq",
        "r_targeting",
        "r_tier",
        "rules",
        "static",
        "targets",
        "tiers",
        "v3",
    )

    def __init__(self, flag: Flag, prefix: str = "X-Flag-",
                 bucketing: Bucketing = Bucketing.FLAGD_V2) -> None:
        self.key = flag.key
        # flagd-v3 (`flag_bucketing`) hashes the CBOR of [key, value] instead of key + value.
        self.v3 = bucketing is Bucketing.FLAGD_V3
        self.flag = flag
        self.header_name = render.header_name(prefix, flag.key)
        variant_of = _variant_namer(flag)

        def outcome(value: Any, reason: Reason, variant: str | None = None) -> Evaluation:
            name = variant if variant is not None else variant_of(value)
            header = render.header_value(value)
            return Evaluation(
                flag=flag.key, value=value, variant=name, reason=reason,
                header=header, pair=(self.header_name, header),
                member=render.summary_member(flag.key, value),
                counter=metrics.FLAG_EVALUATIONS.labels(flag.key, name, reason.value),
            )

        default = flag.default
        self.active = flag.status is FlagStatus.ACTIVE
        self.killed = flag.kill_switch
        self.expires_day = epoch_day(flag.expires) if flag.expires is not None else None
        self.environments = {env: outcome(value, Reason.ENVIRONMENT_OVERRIDE)
                             for env, value in flag.environments.items()}
        self.tiers = frozenset(flag.tiers) if flag.tiers is not None else None
        self.prerequisites = flag.prerequisites
        # (attribute, test) per rule; `rules` are the same tests as predicates of a context.
        self.targets: tuple[tuple[str, Test], ...] = tuple(
            (rule.attribute, rule_test(rule)) for rule in flag.targeting)
        self.rules = tuple(predicate(attribute, test) for attribute, test in self.targets)
        self.bucket_value: Getter = (attribute_getter(flag.bucket_by) if flag.bucket_by
                                     else _default_bucket_value)
        self.r_disabled = outcome(default, Reason.DISABLED)
        self.r_killed = outcome(default, Reason.KILLED)
        self.r_expired = outcome(default, Reason.EXPIRED)
        self.r_tier = outcome(default, Reason.TIER_NOT_ELIGIBLE)
        self.r_prereq = outcome(default, Reason.PREREQUISITE_FAILED)
        self.r_targeting = outcome(default, Reason.TARGETING_NOT_MATCHED)
        self.r_excluded = outcome(default, Reason.ROLLOUT_EXCLUDED)
        self.r_error = outcome(default, Reason.ERROR)
        self.static = outcome(True, Reason.STATIC)
        self.cuts: tuple[int, ...] | None = None
        self.outcomes: tuple[Evaluation, ...] = ()
        if flag.type is FlagType.MULTIVARIATE:
            self.cuts = thresholds([v.weight for v in flag.variants])
            self.outcomes = tuple(outcome(v.value, Reason.SPLIT, v.name)
                                  for v in flag.variants)
        elif flag.rollout is not None and flag.type is not FlagType.OPERATIONAL:
            # A percentage rollout is the split [rollout, 100 - rollout] over (true, default).
            share = Fraction(flag.rollout).limit_denominator(10**6)
            self.cuts = thresholds([share, 100 - share])
            self.outcomes = (outcome(True, Reason.ROLLOUT), self.r_excluded)

    def settled(self, today: int, environment: str) -> Evaluation | None:
        """The outcome when the request cannot change it (status, kill switch, expiry,
        environment), else None: the same for every request of one day and environment."""
        if not self.active:
            return self.r_disabled
        if self.killed:
            return self.r_killed
        if self.expires_day is not None and today > self.expires_day:
            return self.r_expired
        if self.environments:
            return self.environments.get(environment)
        return None

    def targeted(self, ctx: RequestContext) -> Evaluation:
        """The outcome for a request that its tier and the prerequisites let through."""
        if self.rules:
            for rule in self.rules:
                if rule(ctx):
                    break
            else:
                return self.r_targeting
        if self.cuts is None:
            return self.static
        value = self.bucket_value(ctx)
        if value is None:
            # An explicit bucket_by the request does not carry: nothing to stick to.
            return self.r_excluded
        hashed = (mmh3.hash(v3_shorthand_input(self.key, value), 0, False) if self.v3
                  else murmur3_32(self.key + value))
        return self.outcomes[bisect_right(self.cuts, hashed)]

    def decide(self, ctx: RequestContext, flags: Mapping[str, CompiledFlag], today: int,
               memo: MutableMapping[str, Evaluation]) -> Evaluation:
        settled = self.settled(today, ctx.environment)
        if settled is not None:
            return settled
        if self.tiers is not None and ctx.subscription_tier not in self.tiers:
            return self.r_tier
        for key in self.prerequisites:
            other = flags.get(key)
            if other is None or not evaluate(other, ctx, flags, today, memo).value:
                return self.r_prereq
        return self.targeted(ctx)

    def failed(self) -> Evaluation:
        """What an evaluation that raised serves: the default, reason ERROR (logged once)."""
        if self.key not in _LOGGED:  # once per flag, not once per request
            _LOGGED.add(self.key)
            log.exception("flag %r: evaluation failed; serving its default", self.key)
        return self.r_error


_LOGGED: set[str] = set()  # flags whose failed evaluation has been logged
# Stands in memo for a flag being evaluated: a prerequisite cycle (only possible through
# a bad runtime change) then reads as a falsy prerequisite instead of recursing forever.
IN_PROGRESS = Evaluation(flag="", value=None, variant="", reason=Reason.PREREQUISITE_FAILED)


def evaluate(flag: CompiledFlag, ctx: RequestContext, flags: Mapping[str, CompiledFlag],
             today: int, memo: MutableMapping[str, Evaluation]) -> Evaluation:
    """The flag's outcome for this request; each flag is evaluated once per `memo`.

    Never raises: an internal error serves the default with reason ERROR (and is logged
    once per flag set and counted in the metric like every outcome).
    """
    done = memo.get(flag.key)
    if done is not None:
        return done
    memo[flag.key] = IN_PROGRESS
    try:
        result = flag.decide(ctx, flags, today, memo)
    except Exception:
        result = flag.failed()
    memo[flag.key] = result
    return result


def _variant_namer(flag: Flag) -> Callable[[Any], str]:
    """Variant label of a served value: the variant holding it, else true/false/default."""
    by_value = [(v.value, v.name) for v in flag.variants]

    def name(value: Any) -> str:
        for candidate, variant in by_value:
            if candidate == value and type(candidate) is type(value):
                return variant
        if isinstance(value, bool):
            return "true" if value else "false"
        return "default"

    return name
