"""Pure parts of the rate limiter: keys, scopes, tiers, headers, lanes, the script loader."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.model import Action, Algorithm, HeaderStyle, RateLimitRule, Scope, TierOverride
from gateway.context import RequestContext
from gateway.luascripts import load_script
from gateway.ratelimit import plan as plan_module
from gateway.ratelimit.decision import NEVER, Decision, RuleResult
from gateway.ratelimit.headers import most_restrictive, rate_limit_fields, retry_after
from gateway.ratelimit.lanes import Lanes
from gateway.ratelimit.plan import RoutePlan
from gateway.ratelimit.rules import make_check, rule_keys, scope_value
from gateway.ratelimit.stage import _hold_action
from gateway.redisslots import key_slot

USER = Scope("user")


def rule(name: str = "r", scope: Scope = USER, **kw: object) -> RateLimitRule:
    params: dict[str, object] = {"algorithm": Algorithm.SLIDING_WINDOW, "limit": 10,
                                 "window": 60.0, **kw}
    return RateLimitRule(name, scope=scope, **params)  # type: ignore[arg-type]


CTX = RequestContext(client_ip="203.0.113.9", user_id="u42", tenant_id="acme",
                     subscription_tier="gold", api_key="ab" * 16,
                     attributes={"app_version": "2.7.1"})


def test_keys_are_tagged_by_their_scope_value_and_end_with_it() -> None:
    # The tag is the CRC-32 of the value: one user's keys share a slot, other users' do not.
    assert rule_keys("gw:", "user_requests", Algorithm.SLIDING_WINDOW, "u42") == (
        "gw:{rl:de86d1de}:user_requests:sw3:u42",)
    assert rule_keys("gw:", "ip", Algorithm.FIXED_WINDOW, "2001:db8::1") == (
        "gw:{rl:00b4af0e}:ip:fw2:2001:db8::1",)
    assert rule_keys("gw:", "other", Algorithm.TOKEN_BUCKET, "u42")[0].startswith(
        "gw:{rl:de86d1de}:")


def test_global_rules_are_tagged_by_rule_and_shard() -> None:
    one = rule_keys("gw:", "g", Algorithm.TOKEN_BUCKET, "*")[0]
    other = rule_keys("gw:", "h", Algorithm.TOKEN_BUCKET, "*")[0]
    shards = {rule_keys("gw:", "g", Algorithm.TOKEN_BUCKET, "*", shard=n)[0] for n in range(8)}
    assert len({key_slot(k) for k in (one, other)}) == 2
    assert len(shards | {one}) == 9 and len({key_slot(k) for k in shards}) == 8
    assert rule_keys("gw:", "g", Algorithm.TOKEN_BUCKET, "*", shard=3)[0].endswith(":g:#3:tb2:*")


def test_scope_values_and_absent_scopes() -> None:
    assert scope_value(Scope("global"), CTX) == "*"
    assert scope_value(Scope("tenant"), CTX) == "acme"
    assert scope_value(Scope("ip"), CTX) == "203.0.113.9"
    assert scope_value(Scope("api_key"), CTX) == "ab" * 16  # the context holds only a hash
    assert scope_value(Scope("attribute", "app_version"), CTX) == "2.7.1"
    assert scope_value(Scope("attribute", "missing"), CTX) is None
    anonymous = RequestContext(client_ip="203.0.113.9")
    plan = RoutePlan((rule("u"), rule("g", Scope("global"))), cost=3, prefix="p:")
    assert [c.rule.name for c in plan.checks(anonymous)] == ["g"]  # the user rule is skipped
    assert plan.checks(anonymous)[0].cost == 3


def test_prepared_checks_are_reused_per_combination_of_scope_values_and_tier() -> None:
    tiered = rule("t", Scope("tenant"), tiers={"gold": TierOverride(limit=100)})
    for rules in [(rule("u"), tiered, rule("g", Scope("global"))),
                  (rule("u"), tiered, rule("a", Scope("attribute", "app_version")))]:
        plan = RoutePlan(rules, cost=2, prefix="p:")
        first = plan.prepare(CTX)
        assert first is not None and first is plan.prepare(CTX)
        assert first.checks == plan.checks(CTX)
        other = RequestContext(client_ip="203.0.113.9", user_id="u7", tenant_id="acme",
                               subscription_tier="gold", attributes={"app_version": "2.7.1"})
        assert plan.prepare(other).checks == plan.checks(other)  # type: ignore[union-attr]
        assert plan.prepare(other).checks[0].keys[0].endswith(":u7")  # type: ignore[union-attr]
        for tier, limit in (("bronze", 10), (None, 10), ("gold", 100)):
            ctx = RequestContext(client_ip="1.1.1.1", user_id="u42", tenant_id="acme",
                                 subscription_tier=tier)
            prepared = plan.prepare(ctx)
            assert prepared is not None and prepared.checks == plan.checks(ctx)
            assert prepared.checks[1].limit == limit
        anonymous = plan.prepare(RequestContext("1.1.1.1"))  # only a global rule applies
        assert ([c.rule.name for c in anonymous.checks] if anonymous else []) == [
            r.name for r in rules if r.scope.kind == "global"]


def test_prepared_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_module, "MAX_PREPARED", 8)
    plan = RoutePlan((rule("u"),), cost=1, prefix="p:")
    assert plan.prepare(RequestContext("1.1.1.1")) is None  # no user: nothing applies
    for n in range(50):
        prepared = plan.prepare(RequestContext("1.1.1.1", user_id=f"u{n}"))
        assert prepared is not None and prepared.checks[0].keys[0].endswith(f":u{n}")
    assert len(plan._cache) <= 8


def test_tier_overrides_only_the_fields_they_set() -> None:
    r = rule(burst=2, tiers={"gold": TierOverride(limit=100, window=10.0)})
    gold = make_check(r, "p:", "u", "gold", 1)
    assert (gold.limit, gold.burst, gold.window_us) == (100, 2, 10_000_000)
    other = make_check(r, "p:", "u", "bronze", 1)
    assert (other.limit, other.burst, other.window_us) == (10, 2, 60_000_000)
    plan = RoutePlan((r,), 1, "p:")
    assert plan.checks(CTX)[0].limit == 100
    assert plan.checks(RequestContext("1.1.1.1", user_id="x", subscription_tier="b")
                       )[0].limit == 10


def test_soft_rules_are_shadow_and_degrade() -> None:
    assert make_check(rule(shadow=True), "", "u", None, 1).soft
    assert make_check(rule(action=Action.DEGRADE), "", "u", None, 1).soft
    assert not make_check(rule(action=Action.QUEUE), "", "u", None, 1).soft


def test_script_reply_parsing() -> None:
    d = Decision.from_flat([0, 1, 5, 100, 0, 0, 0, 2_000_000, 1_500_001])
    assert not d.admitted
    assert d.results == (RuleResult(True, 5, 100, 0), RuleResult(False, 0, 2_000_000, 1_500_001))


def test_headers_name_the_most_restrictive_rule() -> None:
    checks = [make_check(rule("wide", limit=1000, burst=200), "", "u", None, 1),
              make_check(rule("narrow", limit=5), "", "u", None, 1)]
    results = [RuleResult(True, 17, 42_000_000, 0), RuleResult(True, 3, 1_000, 0)]
    i = most_restrictive(checks, results)
    assert checks[i].rule.name == "narrow"
    assert rate_limit_fields(HeaderStyle.IETF, checks[0], results[0]) == [
        ("RateLimit-Policy", '"wide";q=1200;w=60'), ("RateLimit", '"wide";r=17;t=42')]
    assert rate_limit_fields(HeaderStyle.LEGACY, checks[1], results[1]) == [
        ("X-RateLimit-Limit", "5"), ("X-RateLimit-Remaining", "3"), ("X-RateLimit-Reset", "1")]
    assert len(rate_limit_fields(HeaderStyle.BOTH, checks[1], results[1])) == 5
    assert rate_limit_fields(HeaderStyle.NONE, checks[1], results[1]) == []


def test_retry_after_rounds_up_and_is_at_least_one_second() -> None:
    c = [make_check(rule("a"), "", "u", None, 1), make_check(rule("b"), "", "u", None, 1)]
    assert retry_after(c, [RuleResult(False, 0, 0, 1), RuleResult(True, 1, 0, 0)]) == 1
    assert retry_after(c, [RuleResult(False, 0, 0, 2_000_001),
                           RuleResult(False, 0, 0, 900_000)]) == 3
    assert retry_after(c, [RuleResult(False, 0, 0, NEVER), RuleResult(True, 1, 0, 0)]) == 60
    refused_last = most_restrictive(c, [RuleResult(False, 0, 0, 5),
                                        RuleResult(False, 0, 0, 9)])
    assert refused_last == 1


def test_hold_action_reject_wins_then_queue_then_delay() -> None:
    def c(action: Action) -> object:
        return make_check(rule(action=action), "", "u", None, 1)

    assert _hold_action([c(Action.DELAY)]) is Action.DELAY  # type: ignore[list-item]
    assert _hold_action([c(Action.DELAY), c(Action.QUEUE)]) is Action.QUEUE  # type: ignore[list-item]
    assert _hold_action([c(Action.QUEUE), c(Action.REJECT)]) is None  # type: ignore[list-item]


async def test_lanes_are_fifo_and_bounded() -> None:
    lanes = Lanes()
    first, second, third = (lanes.join("k", 3) for _ in range(3))
    assert first is not None and second is not None and third is not None
    assert lanes.join("k", 3) is None
    assert first.done() and not second.done()
    lanes.leave("k", third)  # leaving from the middle passes no turn
    assert not second.done()
    lanes.leave("k", first)
    await asyncio.wait_for(second, 1)
    lanes.leave("k", second)
    assert not lanes.busy("k")


def test_script_is_found_and_hashed() -> None:
    script = load_script("ratelimit")
    assert "redis.call('TIME')" in script.source and len(script.sha) == 40
