"""flagd flag files: JsonLogic targeting with flagd's operators, both bucketing schemes.

Conformance: the flag definitions in data/flagd_testbed_flags.json are copied from
open-feature/flagd-testbed (evaluator/flags/testkit-flags.json), and every expected result
below is from that repository's scenarios (evaluator/gherkin/fractional.feature,
semver.feature, string.feature, evaluator-refs.feature, targeting.feature) unless marked
otherwise. flagd-v3 is checked against openfeature-flagd-core (PyPI), the evaluator newer
flagd providers use.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from openfeature.contrib.tools.flagd.core.targeting.custom_ops import (
    fractional as reference_v3_fractional,
)

from gateway.config.model import Bucketing
from gateway.flagd import FlagdSet, evaluate_flagd, parse_flagd
from gateway.flagd.operators import fractional_operator
from gateway.flags.definition import parse_definition
from gateway.flags.evaluate import CompiledFlag, evaluate
from gateway.flags.plan import FlagPlan
from gateway.flags.render import header_value
from tests.unit.test_flag_evaluation import CONFIG, TODAY, ctx
from tests.unit.test_flag_plan import at

V2, V3 = Bucketing.FLAGD_V2, Bucketing.FLAGD_V3
TESTBED = Path(__file__).parent / "data" / "flagd_testbed_flags.json"


@pytest.fixture(scope="module")
def testbed() -> FlagdSet:
    flags, problems = parse_flagd(TESTBED.read_bytes(), str(TESTBED))
    assert problems == []
    return flags


def value(flags: FlagdSet, key: str, context: dict[str, Any], bucketing: Bucketing = V2,
          now: float = 1_700_000_000) -> Any:
    return evaluate_flagd(flags.flags[key], context, bucketing, now).value


# ------------------------------------------------------------------ fractional, flagd-v2

@pytest.mark.parametrize(("name", "expected"), [
    ("jack", "hearts"), ("queen", "spades"), ("ten", "clubs"), ("nine", "diamonds"),
    (3, "clubs")])
def test_fractional_v2_buckets_by_the_given_string(testbed: FlagdSet, name: Any,
                                                   expected: str) -> None:
    assert value(testbed, "fractional-flag", {"user": {"name": name}}) == expected


@pytest.mark.parametrize(("key", "expected"), [
    ("jon@company.com", "heads"), ("jane@company.com", "tails")])
def test_fractional_v2_shorthand_buckets_by_flag_key_and_targeting_key(
        testbed: FlagdSet, key: str, expected: str) -> None:
    assert value(testbed, "fractional-flag-shorthand", {"targetingKey": key}) == expected


@pytest.mark.parametrize(("name", "a", "b"), [
    ("seven", "hearts", "ace-of-hearts"), ("eight", "diamonds", "ace-of-diamonds"),
    ("nine", "clubs", "ace-of-clubs"), ("two", "spades", "ace-of-spades")])
def test_fractional_v2_shared_seed_puts_two_flags_in_the_same_bucket(
        testbed: FlagdSet, name: str, a: str, b: str) -> None:
    assert value(testbed, "fractional-flag-A-shared-seed", {"user": {"name": name}}) == a
    assert value(testbed, "fractional-flag-B-shared-seed", {"user": {"name": name}}) == b


@pytest.mark.parametrize(("key", "expected"), [
    ("ejOoVL", "lower"), ("bY9fO-", "lower"), ("SI7p-", "lower"), ("6LvT0", "upper"),
    ("ceQdGm", "upper")])
def test_fractional_v2_hash_edge_values(testbed: FlagdSet, key: str, expected: str) -> None:
    assert value(testbed, "fractional-hash-edge-flag", {"targetingKey": key}) == expected


@pytest.mark.parametrize(("key", "tier", "expected"), [
    ("jon@company.com", "premium", "premium"), ("jon@company.com", "basic", "standard"),
    ("user1", "premium", "standard"), ("user1", "basic", "standard")])
def test_fractional_nested_if_as_variant_name(testbed: FlagdSet, key: str, tier: str,
                                              expected: str) -> None:
    assert value(testbed, "fractional-nested-if-flag",
                 {"targetingKey": key, "tier": tier}) == expected


@pytest.mark.parametrize(("key", "color", "expected"), [
    ("jon@company.com", "red", "red"), ("jon@company.com", "green", "green"),
    ("user1", "red", "blue")])
def test_fractional_nested_var_as_variant_name(testbed: FlagdSet, key: str, color: str,
                                               expected: str) -> None:
    assert value(testbed, "fractional-nested-var-flag",
                 {"targetingKey": key, "color": color}) == expected


def test_fractional_nested_var_naming_no_variant_is_an_error(testbed: FlagdSet) -> None:
    outcome = evaluate_flagd(testbed.flags["fractional-nested-var-flag"],
                             {"targetingKey": "jon@company.com", "color": "yellow"}, V2, 0)
    assert (outcome.reason, outcome.error_code, outcome.has_value) == ("ERROR", "GENERAL",
                                                                        False)


@pytest.mark.parametrize(("key", "tier", "expected"), [
    ("jon@company.com", "premium", "red"), ("jon@company.com", "basic", "blue"),
    ("user1", "premium", "red"), ("user1", "basic", "blue")])
def test_fractional_nested_if_as_weight(testbed: FlagdSet, key: str, tier: str,
                                        expected: str) -> None:
    assert value(testbed, "fractional-nested-weight-flag",
                 {"targetingKey": key, "tier": tier}) == expected


def test_fractional_as_a_condition_inside_if(testbed: FlagdSet) -> None:
    context = {"targetingKey": "some-targeting-key"}
    assert value(testbed, "fractional-as-condition-flag", context) == "hundreds"
    assert value(testbed, "fractional-as-condition-false-flag", context) == "ones"
    assert value(testbed, "fractional-single-entry-flag", context) == "single"


@pytest.mark.parametrize(("key", "context", "expected"), [
    ("fractional-null-bucket-key-flag", {}, "fallback"),
    ("fractional-zero-weights-flag", {"targetingKey": "any-user"}, "fallback"),
    ("fractional-negative-weight-flag", {"targetingKey": "any-user"}, "two")])
def test_fractional_operator_errors_serve_the_default_variant(
        testbed: FlagdSet, key: str, context: dict[str, Any], expected: str) -> None:
    outcome = evaluate_flagd(testbed.flags[key], context, V2, 0)
    assert outcome.value == expected
    assert outcome.reason == ("DEFAULT" if expected == "fallback" else "TARGETING_MATCH")


# ------------------------------------------------------------------ string and semver

@pytest.mark.parametrize(("ident", "expected"), [
    ("abcdef", "prefix"), ("uvwxyz", "postfix"), ("abcxyz", "prefix"), ("lmnopq", "none")])
def test_starts_with_and_ends_with(testbed: FlagdSet, ident: str, expected: str) -> None:
    assert value(testbed, "starts-ends-flag", {"id": ident}) == expected


@pytest.mark.parametrize(("key", "context"), [
    ("starts-with-non-string-flag", {"num": 123}), ("ends-with-non-string-flag", {"num": 123}),
    ("starts-with-wrong-args-flag", {}), ("ends-with-wrong-args-flag", {}),
    ("semver-invalid-version-flag", {"version": "not-a-version"}),
    ("semver-invalid-operator-flag", {"version": "1.0.0"})])
def test_operator_errors_inside_if_serve_the_default_variant_not_the_else_branch(
        testbed: FlagdSet, key: str, context: dict[str, Any]) -> None:
    outcome = evaluate_flagd(testbed.flags[key], context, V2, 0)
    assert (outcome.value, outcome.reason) == ("fallback", "DEFAULT")


@pytest.mark.parametrize(("key", "version", "expected"), [
    ("equal-greater-lesser-version-flag", "2.0.0", "equal"),
    ("equal-greater-lesser-version-flag", "2.1.0", "greater"),
    ("equal-greater-lesser-version-flag", "1.9.0", "lesser"),
    ("equal-greater-lesser-version-flag", "2.0.0-alpha", "lesser"),
    ("equal-greater-lesser-version-flag", "2.0.0.0", "none"),
    ("major-minor-version-flag", "3.0.1", "minor"),
    ("major-minor-version-flag", "3.1.0", "major"),
    ("major-minor-version-flag", "4.0.0", "none"),
    ("semver-v-prefix-flag", "1.0.0", "match"), ("semver-v-prefix-flag", "v1.0.0", "match"),
    ("semver-v-prefix-flag", "2.0.0", "no-match"),
    ("semver-partial-version-flag", "1.5.0", "match"),
    ("semver-partial-version-flag", "1.0.0", "match"),
    ("semver-partial-version-flag", "2.0.0", "no-match"),
    ("semver-build-metadata-flag", "1.0.0", "match"),
    ("semver-build-metadata-flag", "1.0.0+other", "match"),
    ("semver-build-metadata-flag", "2.0.0", "no-match")])
def test_sem_ver(testbed: FlagdSet, key: str, version: str, expected: str) -> None:
    assert value(testbed, key, {"version": version}) == expected


# ------------------------------------------------------------------ $ref, targetingKey, $flagd

@pytest.mark.parametrize(("key", "email", "expected"), [
    ("some-email-targeted-flag", "ballmer@macrosoft.com", "hi"),
    ("some-other-email-targeted-flag", "ballmer@macrosoft.com", "yes"),
    ("ref-whitespace-space-around-colon-flag", "ballmer@macrosoft.com", "hi"),
    ("ref-whitespace-space-around-colon-flag", "user@example.com", "bye")])
def test_ref_evaluators_are_shared_rules(testbed: FlagdSet, key: str, email: str,
                                         expected: str) -> None:
    outcome = evaluate_flagd(testbed.flags[key], {"email": email}, V2, 0)
    assert (outcome.value, outcome.reason) == (expected, "TARGETING_MATCH")


@pytest.mark.parametrize(("key", "expected", "reason"), [
    ("5c3d8535-f81a-4478-a6d3-afaa4d51199e", "hit", "TARGETING_MATCH"),
    ("f20bd32d-703b-48b6-bc8e-79d53c85134a", "miss", "DEFAULT")])
def test_targeting_key_is_readable_and_null_means_default(testbed: FlagdSet, key: str,
                                                          expected: str, reason: str) -> None:
    outcome = evaluate_flagd(testbed.flags["targeting-key-flag"], {"targetingKey": key}, V2, 0)
    assert (outcome.value, outcome.reason) == (expected, reason)


def test_flagd_timestamp_is_the_evaluation_time_in_seconds() -> None:
    # Scenario "Time-based operations" of gherkin/flagd-json-evaluator.feature (time 1 -> -1,
    # 4133980802 -> 1); the flag definition is written here after it.
    flags, problems = parse_flagd(b"""{"flags": {"timestamp-flag": {"state": "ENABLED",
      "variants": {"past": -1, "future": 1, "none": 0}, "defaultVariant": "none",
      "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, {"var": "time"}]}, "past",
                           {"if": [{"<": [{"var": "$flagd.timestamp"}, {"var": "time"}]},
                                   "future", "none"]}]}}}}""")
    assert problems == []
    flag = flags.flags["timestamp-flag"]
    assert evaluate_flagd(flag, {"time": 1}, V2, 1_764_000_000.7).value == -1
    assert evaluate_flagd(flag, {"time": 4133980802}, V2, 1_764_000_000.7).value == 1
    assert evaluate_flagd(flag, {"time": 1_764_000_000}, V2, 1_764_000_000.7).value == 0


def test_flagd_flag_key_is_readable() -> None:
    flags, _ = parse_flagd(b"""{"flags": {"k1": {"state": "ENABLED",
      "variants": {"yes": true, "no": false}, "defaultVariant": "no",
      "targeting": {"if": [{"==": [{"var": "$flagd.flagKey"}, "k1"]}, "yes", "no"]}}}}""")
    assert evaluate_flagd(flags.flags["k1"], {}, V2, 0).value is True


def test_disabled_flag_has_no_value_and_reason_disabled(testbed: FlagdSet) -> None:
    flags, _ = parse_flagd(b"""{"flags": {"off": {"state": "DISABLED",
      "variants": {"a": 1}, "defaultVariant": "a"}}}""")
    outcome = evaluate_flagd(flags.flags["off"], {}, V2, 0)
    assert (outcome.has_value, outcome.reason) == (False, "DISABLED")


# ------------------------------------------------------------------ flagd-v3 bucketing

@pytest.mark.parametrize(("name", "expected"), [
    ("jack", "diamonds"), ("queen", "diamonds"), ("ten", "clubs"), ("nine", "clubs"),
    (3, "spades")])
def test_fractional_v3_hashes_the_cbor_encoding(testbed: FlagdSet, name: Any,
                                                expected: str) -> None:
    # The testbed's @fractional-v3 examples (a later revision of fractional.feature).
    assert value(testbed, "fractional-flag", {"user": {"name": name}}, V3) == expected


@pytest.mark.parametrize("key", ["jon@company.com", "jane@company.com"])
def test_fractional_v3_shorthand_hashes_flag_key_and_targeting_key_as_a_list(
        testbed: FlagdSet, key: str) -> None:
    assert value(testbed, "fractional-flag-shorthand", {"targetingKey": key}, V3) == "tails"


def _v3_inputs() -> list[Any]:
    rng = random.Random(7)
    out: list[Any] = [True, False, 0, -0.0, 1.0, 1, -2, 23, 24, -24, -25, 255, 256, 65535,
                      65536, 2**31 - 1, -(2**31), 1e20, -1e20, 65504.0, 3.5e38, 1.23,
                      9007199254740992.0, 5e-324, "", "user1", "123", "ÿ", {"b": 2, "a": 1},
                      {"z": 1, "aa": 2}, {"a": {"b": 1}, "b": [1, "x", None]}]
    for _ in range(200):
        out.append(rng.choice([rng.randint(-(2**40), 2**40), rng.uniform(-1e6, 1e6),
                               "".join(rng.choices("abcxyz@.-019ÿé", k=rng.randint(1, 12)))]))
    return out


def test_fractional_v3_agrees_with_openfeature_flagd_core() -> None:
    buckets = [[f"b{i}", w] for i, w in enumerate([5, 10, 1, 30, 7, 20, 27])]
    flag = parse_flagd(('{"flags": {"f": {"state": "ENABLED", "variants": {'
                        + ", ".join(f'"b{i}": "b{i}"' for i in range(7))
                        + '}, "defaultVariant": "b0", "targeting": {"fractional": '
                        '[{"var": "input"}, ' + ", ".join(f'["b{i}", {w}]' for i, (_, w)
                                                          in enumerate(buckets))
                        + ']}}}}').encode())[0].flags["f"]
    for item in _v3_inputs():  # a list as first argument means the shorthand: not here
        expected = reference_v3_fractional({}, item, *buckets)
        assert evaluate_flagd(flag, {"input": item}, V3, 0).value == expected, item


# ------------------------------------------------------------------ refused at load

@pytest.mark.parametrize(("text", "path", "message"), [
    ('{"flags": {"f": {"state": "ON", "variants": {"a": 1}}}}', "flags.f.state", "ENABLED"),
    ('{"flags": {"f": {"state": "ENABLED", "variants": {}}}}', "flags.f.variants", "non-empty"),
    ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}}',
     "flags.f.defaultVariant", "not one of the variants"),
    ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": '
     '{"if": [{"$ref": "nope"}, "a"]}}}}', "flags.f.targeting.if[0]", "$ref 'nope'"),
    ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": '
     '{"frac": [1]}}}}', "flags.f.targeting", "unknown JsonLogic operator 'frac'"),
    ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "typo": 1}}}',
     "flags.f.typo", "unknown member"),
    ('{"flags": [', "(json)", "not valid JSON"),
    ('{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": '
     '{"if": [{"$ref": "loop"}, "a"]}}}, "$evaluators": {"loop": {"!": {"$ref": "loop"}}}}',
     "$evaluators.loop", "deeper"),
])
def test_bad_flag_files_are_refused_with_the_json_path(text: str, path: str,
                                                       message: str) -> None:
    _, problems = parse_flagd(text.encode())
    assert any(p.startswith(path) and message in m for p, m in problems), problems


# ------------------------------------------------------------------ the gateway's own flags

@pytest.mark.parametrize("bucketing", [V2, V3])
def test_gateway_flags_bucket_as_flagd_shorthand_under_flag_bucketing(bucketing: Bucketing
                                                                      ) -> None:
    """A newer flagd provider (v3) or flagd today (v2), given the equivalent flagd flag
    (fractional shorthand over the same weights, targetingKey = user_id), serves the same
    variant as the gateway's evaluate and its generated plan."""
    definitions = {
        "rollout_flag": {"type": "boolean", "default": False, "rollout": 30},
        "split_flag": {"type": "multivariate", "default": "blue", "variants": [
            {"name": "control", "value": "blue", "weight": 50},
            {"name": "green", "value": "green", "weight": 30},
            {"name": "red", "value": "red", "weight": 20}]},
    }
    splits = {"rollout_flag": [[True, 30], [False, 70]],
              "split_flag": [["blue", 50], ["green", 30], ["red", 20]]}
    compiled = {}
    for key, definition in definitions.items():
        flag, errors = parse_definition(CONFIG, key, definition)
        assert flag is not None, errors
        compiled[key] = CompiledFlag(flag, bucketing=bucketing)
    plan = FlagPlan(list(compiled.values()), compiled, None)
    differs_from_v2 = 0
    for i in range(300):
        user = f"user-{i}@example.com"
        for key, flag in compiled.items():
            data = {"targetingKey": user, "$flagd": {"flagKey": key}}
            # v3: flagd's own evaluator; v2: the operator the testbed cases above check.
            expected = (reference_v3_fractional(data, *splits[key]) if bucketing is V3
                        else fractional_operator(V2)(data, *splits[key]))
            context = ctx(user_id=user)
            got = evaluate(flag, context, compiled, TODAY, {}).value
            assert got == expected, (key, user)
            planned = plan.decide(context, at(TODAY))
            assert planned is not None
            assert (flag.header_name, header_value(expected)) in planned.fields.pairs
            differs_from_v2 += got != evaluate(CompiledFlag(flag.flag), context, {}, TODAY,
                                               {}).value
    # The schemes really differ (so the v3 case cannot pass by computing v2).
    assert (differs_from_v2 > 50) if bucketing is V3 else differs_from_v2 == 0
