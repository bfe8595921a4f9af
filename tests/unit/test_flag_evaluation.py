"""Flag evaluation: reasons, operators, flagd fractional v2 bucketing, headers."""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

import mmh3
import pytest
from multidict import CIMultiDict

from gateway.config import load_config
from gateway.config.model import Config, ContextSettings, HeaderSource
from gateway.context import RequestContext
from gateway.flags.definition import (
    check_flag_set,
    flag_to_json,
    merge_patch,
    parse_definition,
)
from gateway.flags.engine import FlagEngine
from gateway.flags.evaluate import (
    CompiledFlag,
    Evaluation,
    Reason,
    epoch_day,
    evaluate,
    murmur3_32,
    thresholds,
)
from gateway.flags.render import header_name, header_value, sf_item, summary_member
from gateway.flags.store import FlagOverrides
from tests.harness import SPEC_DIR

CONFIG = Config(source="test", environment="production", context=ContextSettings(
    attributes={"app_version": HeaderSource("X-App-Version"),
                "plan_seats": HeaderSource("X-Seats")}))
TODAY = epoch_day(dt.date(2026, 1, 15))


def compile_flags(definitions: dict[str, dict[str, Any]]) -> dict[str, CompiledFlag]:
    flags = {}
    for key, definition in definitions.items():
        flag, errors = parse_definition(CONFIG, key, definition)
        assert flag is not None, errors
        flags[key] = flag
    assert check_flag_set(CONFIG, flags) == []
    return {key: CompiledFlag(flag) for key, flag in flags.items()}


def ctx(**fields: Any) -> RequestContext:
    fields.setdefault("client_ip", "192.0.2.1")
    fields.setdefault("environment", "production")
    return RequestContext(**fields)


def run(definition: dict[str, Any], context: RequestContext | None = None,
        others: dict[str, dict[str, Any]] | None = None, today: int = TODAY) -> Evaluation:
    flags = compile_flags({"f": definition, **(others or {})})
    return evaluate(flags["f"], context or ctx(user_id="u1"), flags, today, {})


# ---------------------------------------------------------------- murmur3 and flagd v2

@pytest.mark.parametrize(("text", "seed", "expected"), [
    # Reference vectors of MurmurHash3_x86_32 (Appleby's SMHasher; mmh3's README for 'foo').
    ("", 0, 0), ("", 1, 0x514E28B7), ("a", 0, 1009084850), ("abc", 0, 3017643002),
    ("abcd", 0, 1139631978), ("abcdefghi", 0, 1108608752), ("foo", 0, 4138058784),
    ("Turn me into a hash", 1234, 4138100590),
])
def test_murmur3_x86_32_reference_vectors(text: str, seed: int, expected: int) -> None:
    assert mmh3.hash(text, seed, signed=False) == expected
    if seed == 0:
        assert murmur3_32(text) == expected


def flagd_v2(hash_value: int, weights: list[int]) -> int:
    """flagd core/pkg/evaluator/fractional.go distributeValue, transcribed literally."""
    bucket = (hash_value * sum(weights)) >> 32
    range_end = 0
    for index, weight in enumerate(weights):
        range_end += weight
        if bucket < range_end:
            return index
    raise AssertionError("unreachable")


@pytest.mark.parametrize("weights", [[50, 30, 20], [25, 75], [1, 0, 99], [0, 100], [100, 0],
                                     [7, 13, 1, 79], [1, 1], [3, 3, 3]])
def test_thresholds_choose_exactly_what_flagd_v2_chooses(weights: list[int]) -> None:
    cuts = thresholds(weights)
    rng = random.Random(5)
    samples = [0, 1, (1 << 32) - 1, *(rng.randrange(1 << 32) for _ in range(20000))]
    samples += [c + d for c in cuts for d in (-1, 0, 1) if 0 <= c + d < 1 << 32]
    from bisect import bisect_right
    for h in samples:
        assert bisect_right(cuts, h) == flagd_v2(h, weights), (h, weights)


def test_bucketing_hashes_flag_key_then_value_like_flagd() -> None:
    # flagd: fractional over {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}.
    flags = compile_flags({"checkout": {"type": "multivariate", "default": "a", "variants": [
        {"name": "a", "value": "a", "weight": 50}, {"name": "b", "value": "b", "weight": 30},
        {"name": "c", "value": "c", "weight": 20}]}})
    for user in ("alice", "bob", "carol", "dave", "erin"):
        got = evaluate(flags["checkout"], ctx(user_id=user), flags, TODAY, {})
        expected = "abc"[flagd_v2(mmh3.hash("checkout" + user, 0, signed=False), [50, 30, 20])]
        assert (got.value, got.reason) == (expected, Reason.SPLIT)


def test_rollout_is_monotonic_25_to_50_keeps_everyone_who_had_it() -> None:
    users = [f"user-{i}" for i in range(5000)]
    base = {"default": False, "rollout": 25}

    def included(rollout: int) -> set[str]:
        flags = compile_flags({"f": {**base, "rollout": rollout}})
        return {u for u in users
                if evaluate(flags["f"], ctx(user_id=u), flags, TODAY, {}).value is True}

    at25, at50 = included(25), included(50)
    assert at25 <= at50
    assert 0.22 < len(at25) / len(users) < 0.28 and 0.47 < len(at50) / len(users) < 0.53


def test_split_50_30_20_over_10000_users_within_2_points() -> None:
    flags = compile_flags({"checkout_button": {
        "type": "multivariate", "default": "blue", "variants": [
            {"name": "control", "value": "blue", "weight": 50},
            {"name": "green", "value": "green", "weight": 30},
            {"name": "red", "value": "red", "weight": 20}]}})
    counts = {"control": 0, "green": 0, "red": 0}
    for i in range(10000):
        result = evaluate(flags["checkout_button"], ctx(user_id=f"u{i}"), flags, TODAY, {})
        counts[result.variant] += 1
    for name, weight in (("control", 50), ("green", 30), ("red", 20)):
        assert abs(counts[name] / 100 - weight) <= 2, counts


def test_same_user_same_answer_from_independently_built_engines() -> None:
    definition = {"default": False, "rollout": 50}
    first, second = compile_flags({"f": definition}), compile_flags({"f": definition})
    for i in range(200):
        c = ctx(user_id=f"u{i}")
        assert (evaluate(first["f"], c, first, TODAY, {}).value
                == evaluate(second["f"], c, second, TODAY, {}).value)


def test_bucket_by_defaults_to_user_then_tenant_then_client_ip() -> None:
    flags = compile_flags({"f": {"default": False, "rollout": 50}})

    def hashed(value: str) -> bool:
        return mmh3.hash("f" + value, 0, signed=False) < thresholds([50, 50])[0]

    for c, key in ((ctx(user_id="u7", tenant_id="t1"), "u7"), (ctx(tenant_id="t9"), "t9"),
                   (ctx(client_ip="198.51.100.4"), "198.51.100.4")):
        assert evaluate(flags["f"], c, flags, TODAY, {}).value is hashed(key)


def test_explicit_bucket_by_missing_from_the_request_excludes() -> None:
    result = run({"default": False, "rollout": 100, "bucket_by": "tenant_id"}, ctx(user_id="u"))
    assert (result.value, result.reason) == (False, Reason.ROLLOUT_EXCLUDED)


# ---------------------------------------------------------------- every reason

@pytest.mark.parametrize(("definition", "context", "value", "reason"), [
    ({"default": False}, ctx(), True, Reason.STATIC),
    ({"type": "operational", "default": False}, ctx(), True, Reason.STATIC),
    ({"default": False, "rollout": 100}, ctx(user_id="u"), True, Reason.ROLLOUT),
    ({"type": "percentage", "default": False, "rollout": 0}, ctx(user_id="u"), False,
     Reason.ROLLOUT_EXCLUDED),
    ({"default": False, "status": "draft"}, ctx(), False, Reason.DISABLED),
    ({"default": False, "status": "deprecated"}, ctx(), False, Reason.DISABLED),
    ({"type": "operational", "default": False, "kill_switch": True}, ctx(), False,
     Reason.KILLED),
    ({"default": False, "expires": "2026-01-14"}, ctx(), False, Reason.EXPIRED),
    ({"default": False, "environments": {"production": False}, "rollout": 100}, ctx(), False,
     Reason.ENVIRONMENT_OVERRIDE),
    ({"default": False, "environments": {"staging": True}}, ctx(environment="staging"), True,
     Reason.ENVIRONMENT_OVERRIDE),
    ({"default": False, "tiers": ["business"]}, ctx(subscription_tier="free"), False,
     Reason.TIER_NOT_ELIGIBLE),
    ({"default": False, "tiers": ["business"]}, ctx(), False, Reason.TIER_NOT_ELIGIBLE),
    ({"default": False, "targeting": [{"attribute": "tenant_id", "operator": "in",
                                       "values": ["acme"]}]}, ctx(tenant_id="other"), False,
     Reason.TARGETING_NOT_MATCHED),
    ({"default": False, "targeting": [{"attribute": "tenant_id", "operator": "in",
                                       "values": ["acme"]}]}, ctx(tenant_id="acme"), True,
     Reason.STATIC),
])
def test_each_reason(definition: dict[str, Any], context: RequestContext, value: Any,
                     reason: Reason) -> None:
    result = run(definition, context)
    assert (result.value, result.reason) == (value, reason)


def test_expires_day_itself_still_serves() -> None:
    assert run({"default": False, "expires": "2026-01-15"}).reason is Reason.STATIC


def test_order_killed_wins_over_expired_and_environment() -> None:
    result = run({"default": False, "kill_switch": True, "expires": "2020-01-01",
                  "environments": {"production": True}})
    assert result.reason is Reason.KILLED


def test_prerequisites_must_be_truthy_and_each_flag_is_evaluated_once() -> None:
    flags = compile_flags({
        "f": {"default": False, "prerequisites": ["gate", "second"]},
        "gate": {"default": False, "tiers": ["business"], "targeting": [
            {"attribute": "user_id", "operator": "regex", "values": [".*"]}]},
        "second": {"default": False, "prerequisites": ["gate"]},
    })
    memo: dict[str, Evaluation] = {}
    no = evaluate(flags["f"], ctx(subscription_tier="free"), flags, TODAY, memo)
    assert no.reason is Reason.PREREQUISITE_FAILED and no.value is False
    assert memo["gate"].reason is Reason.TIER_NOT_ELIGIBLE

    calls: list[RequestContext] = []

    def counting_rule(c: RequestContext) -> bool:
        calls.append(c)
        return True

    flags["gate"].rules = (counting_rule,)
    memo = {}
    yes = evaluate(flags["f"], ctx(subscription_tier="business"), flags, TODAY, memo)
    assert yes.reason is Reason.STATIC and yes.value is True
    assert set(memo) == {"f", "gate", "second"}
    assert len(calls) == 1  # "f" and "second" both need "gate": decided once per request


def test_internal_error_serves_default_with_reason_error() -> None:
    flags = compile_flags({"f": {"default": False, "targeting": [
        {"attribute": "tenant_id", "operator": "equals", "values": ["x"]}]}})

    def broken(_: RequestContext) -> bool:
        raise RuntimeError("boom")

    flags["f"].rules = (broken,)
    result = evaluate(flags["f"], ctx(tenant_id="x"), flags, TODAY, {})
    assert (result.value, result.reason) == (False, Reason.ERROR)


def test_prerequisite_cycle_from_a_bad_runtime_state_fails_closed() -> None:
    a, _ = parse_definition(CONFIG, "a", {"default": False, "prerequisites": ["b"]})
    b, _ = parse_definition(CONFIG, "b", {"default": False, "prerequisites": ["a"]})
    assert a is not None and b is not None
    flags = {"a": CompiledFlag(a), "b": CompiledFlag(b)}
    assert evaluate(flags["a"], ctx(), flags, TODAY, {}).reason is Reason.PREREQUISITE_FAILED


# ---------------------------------------------------------------- every operator

def rule(attribute: str, op: str, values: list[Any]) -> dict[str, Any]:
    return {"default": False, "targeting": [{"attribute": attribute, "operator": op,
                                             "values": values}]}


@pytest.mark.parametrize(("attribute", "op", "values", "actual", "matches"), [
    ("tenant_id", "equals", ["acme"], "acme", True),
    ("tenant_id", "equals", ["acme"], "Acme", False),
    ("tenant_id", "not_equals", ["acme"], "globex", True),
    ("tenant_id", "not_equals", ["acme"], "acme", False),
    ("tenant_id", "in", ["acme", "globex"], "globex", True),
    ("tenant_id", "in", ["acme", "globex"], "initech", False),
    ("tenant_id", "not_in", ["acme", "globex"], "initech", True),
    ("tenant_id", "not_in", ["acme", "globex"], "acme", False),
    ("region", "contains", ["west"], "us-west-2", True),
    ("region", "contains", ["west"], "eu-central-1", False),
    ("region", "starts_with", ["eu-", "uk-"], "uk-south", True),
    ("region", "starts_with", ["eu-"], "us-east-1", False),
    ("region", "ends_with", ["-1"], "us-east-1", True),
    ("region", "ends_with", ["-1"], "us-east-2", False),
    ("user_id", "regex", ["u[0-9]+"], "u123", True),
    ("user_id", "regex", ["u[0-9]+"], "u123x", False),  # full match, not search
    ("attributes.app_version", "semver_eq", ["2.7.0"], "2.7.0", True),
    ("attributes.app_version", "semver_eq", ["2.7.0"], "2.7.0-rc.1", False),
    ("attributes.app_version", "semver_lt", ["2.7.0"], "2.7.0-rc.1", True),
    ("attributes.app_version", "semver_lt", ["2.7.0"], "2.10.0", False),
    ("attributes.app_version", "semver_lte", ["2.7.0"], "2.7.0", True),
    ("attributes.app_version", "semver_gt", ["2.7.0"], "2.10.0", True),
    ("attributes.app_version", "semver_gt", ["2.7.0"], "2.7.0", False),
    ("attributes.app_version", "semver_gte", ["2.7.0"], "2.7.0", True),
    ("attributes.app_version", "semver_gte", ["2.7.0"], "2.6.9", False),
    ("attributes.app_version", "semver_gte", ["2.7.0"], "not-a-version", False),
    ("attributes.plan_seats", "lt", [10], "9.5", True),
    ("attributes.plan_seats", "lt", [10], "10", False),
    ("attributes.plan_seats", "lte", [10], "10", True),
    ("attributes.plan_seats", "gt", [10], "11", True),
    ("attributes.plan_seats", "gt", [10], "ten", False),
    ("attributes.plan_seats", "gte", [10], "10.0", True),
    ("attributes.plan_seats", "gte", [10], "9", False),
    ("client_ip", "cidr", ["10.20.0.0/16"], "10.20.3.4", True),
    ("client_ip", "cidr", ["10.20.0.0/16"], "10.21.3.4", False),
    ("client_ip", "cidr", ["10.20.0.0/16", "2001:db8::/32"], "2001:db8::7", True),
    ("client_ip", "cidr", ["2001:db8::/32"], "10.20.3.4", False),
    ("client_ip", "cidr", ["10.20.0.0/16"], "not-an-ip", False),
])
def test_each_operator(attribute: str, op: str, values: list[Any], actual: str,
                       matches: bool) -> None:
    if attribute.startswith("attributes."):
        context = ctx(attributes={attribute.removeprefix("attributes."): actual})
    else:
        context = ctx(**{attribute: actual})
    result = run(rule(attribute, op, values), context)
    assert result.reason is (Reason.STATIC if matches else Reason.TARGETING_NOT_MATCHED)


@pytest.mark.parametrize("op", ["equals", "not_equals", "in", "not_in", "contains",
                                "starts_with", "ends_with", "regex", "semver_gte", "gte",
                                "cidr"])
def test_a_missing_attribute_never_matches(op: str) -> None:
    value = {"semver_gte": "1.0.0", "gte": 1, "cidr": "10.0.0.0/8", "regex": ".*"}.get(op, "x")
    result = run(rule("attributes.app_version", op, [value]), ctx())
    assert result.reason is Reason.TARGETING_NOT_MATCHED


def test_any_rule_matching_is_enough() -> None:
    definition = {"default": False, "targeting": [
        {"attribute": "tenant_id", "operator": "in", "values": ["acme"]},
        {"attribute": "client_ip", "operator": "cidr", "values": ["10.20.0.0/16"]}]}
    assert run(definition, ctx(client_ip="10.20.0.9")).reason is Reason.STATIC


# ---------------------------------------------------------------- definitions

@pytest.mark.parametrize(("definition", "message"), [
    ({"type": "multivariate", "default": "pink", "variants": [
        {"name": "a", "value": "blue", "weight": 1}]}, "'pink' is not the value of any variant"),
    ({"type": "percentage", "default": False}, "a percentage flag needs rollout"),
    ({"type": "operational", "default": False, "rollout": 5}, "an operational flag is on or off"),
    ({"default": "yes"}, "a boolean flag serves true or false"),
    ({"default": False, "environments": {"staging": "on"}}, "serves true or false"),
    ({"type": "multivariate", "default": "a\r\nX-Evil: 1", "variants": [
        {"name": "a", "value": "a\r\nX-Evil: 1", "weight": 1}]}, "control character"),
    ({"rollout": "fifty"}, "flags.f.rollout: expected a number"),
    ({"rolout": 5}, "unknown key 'rolout' (did you mean 'rollout'?)"),
])
def test_definitions_are_checked_like_the_config_file(definition: dict[str, Any],
                                                      message: str) -> None:
    flag, errors = parse_definition(CONFIG, "f", definition)
    assert flag is None and any(message in e for e in errors), errors


def test_flag_keys_must_be_header_safe() -> None:
    _, errors = parse_definition(CONFIG, "bad key", {"default": False})
    assert any("flag keys may use" in e for e in errors)


def test_reference_flags_round_trip_through_json() -> None:
    config = load_config(str(SPEC_DIR / "gateway.yaml"))
    for key, flag in config.flags.items():
        again, errors = parse_definition(config, key, flag_to_json(flag))
        assert errors == [] and again == flag


def test_merge_patch_follows_rfc_7396() -> None:
    # RFC 7396 Appendix A, a selection.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b", "b": "c"}, {"a": None}) == {"b": "c"}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}


# ---------------------------------------------------------------- headers

def test_header_names_and_values_per_contract() -> None:
    assert header_name("X-Flag-", "new_dashboard") == "X-Flag-New-Dashboard"
    assert [header_value(v) for v in (True, False, 42, 2.5, 1e20, "blue", {"a": [1, 2]},
                                      None)] == [
        "true", "false", "42", "2.5", "100000000000000000000", "blue", '{"a":[1,2]}', "null"]


def test_summary_items_per_rfc_8941() -> None:
    assert sf_item(True) == "?1" and sf_item(False) == "?0"
    assert sf_item(-42) == "-42" and sf_item(10**15) is None
    assert sf_item(2.5) == "2.5" and sf_item(2.0) == "2.0" and sf_item(0.12345) == "0.123"
    assert sf_item('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert sf_item("caf\u00e9") is None  # sf-string is printable ASCII only
    assert sf_item({"k": "v"}) == '"{\\"k\\":\\"v\\"}"'
    assert summary_member("beta_reports", True) == "beta_reports=?1"
    assert summary_member("NewDash", True) is None  # not an sf-key: left out of the summary
    assert summary_member("1st", True) is None


def test_engine_headers_for_reference_config_flags_all_route() -> None:
    config = load_config(str(SPEC_DIR / "gateway.yaml"))
    engine = FlagEngine(config)
    default_route = config.routes[-1]
    c = ctx(user_id="u1", tenant_id="acme", subscription_tier="free",
            attributes={"app_version": "2.8.0"})
    decided = engine.decide(default_route, c)
    assert decided is not None
    headers = dict(decided.fields.pairs)
    assert headers["X-Flag-New-Dashboard"] == "false"  # free tier is not eligible
    assert headers["X-Flag-Checkout-Button"] == "blue"  # prerequisite failed -> default
    assert headers["X-Flag-Beta-Reports"] == "true"  # tenant acme is targeted
    assert headers["X-Flag-Maintenance-Mode"] == "false"  # killed
    assert headers["X-Feature-Flags"] == ('new_dashboard=?0, checkout_button="blue", '
                                          'beta_reports=?1, maintenance_mode=?0')
    reports = next(r for r in config.routes if r.name == "reports")
    decided = engine.decide(reports, c)
    assert decided is not None and [n for n, _ in decided.fields.pairs] == [
        "X-Flag-New-Dashboard", "X-Flag-Beta-Reports", "X-Feature-Flags"]
    market = next(r for r in config.routes if r.name == "market")
    assert engine.decide(market, c) is None


def test_engine_deciders_follow_runtime_changes_on_the_very_next_call() -> None:
    """The deciders the pipeline keeps per route (the plans' generated code) notice a run-time
    change by themselves: from a context and from the header section alike."""
    config = load_config(str(SPEC_DIR / "gateway.yaml"))
    overrides = FlagOverrides()
    engine = FlagEngine(config, overrides)
    route = config.routes[-1]  # flags: all
    c = ctx(user_id="u1", environment=config.environment)
    headers = CIMultiDict({"X-User-Id": "u1"})

    def served() -> list[dict[str, str]]:
        by_context = engine.by_context[route.name](c, time.time())
        by_headers = engine.by_headers[route.name](headers, "127.0.0.1", True, time.time())
        assert by_context is not None and by_headers is not None
        return [dict(by_context.fields.pairs), dict(by_headers.fields.pairs)]

    for seen in served():
        assert seen["X-Flag-Maintenance-Mode"] == "false" and "X-Flag-Dark-Mode" not in seen
    kept = (engine.by_context[route.name], engine.by_headers[route.name])
    overrides.apply("maintenance_mode", {"type": "operational", "default": False})
    overrides.apply("dark_mode", {"type": "boolean", "default": False, "rollout": 100})
    # What a caller kept from before the change still answers for the new flag set.
    after = [kept[0](c, time.time()), kept[1](headers, "127.0.0.1", True, time.time())]
    for result in after:
        assert result is not None
        assert dict(result.fields.pairs)["X-Flag-Maintenance-Mode"] == "true"
    for seen in served():
        assert seen["X-Flag-Maintenance-Mode"] == "true" and seen["X-Flag-Dark-Mode"] == "true"
