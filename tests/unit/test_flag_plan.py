"""A route's FlagPlan serves exactly what `evaluate` decides, and counts the same evaluations."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.config.model import ContextSettings, Flag, HeaderSource
from gateway.context import RequestContext, build_context
from gateway.flags import plan as plan_module
from gateway.flags.definition import parse_definition
from gateway.flags.evaluate import CompiledFlag, Evaluation, Reason, evaluate
from gateway.flags.plan import FlagPlan
from gateway.proxy import AddedFields
from tests.unit.test_flag_evaluation import CONFIG, TODAY, compile_flags, ctx

SUMMARY = "X-Feature-Flags"
RULES = [
    {"attribute": "tenant_id", "operator": "in", "values": ["acme", "globex"]},
    {"attribute": "attributes.app_version", "operator": "semver_gte", "values": ["2.7.0"]},
    {"attribute": "client_ip", "operator": "cidr", "values": ["10.20.0.0/16"]},
    {"attribute": "user_id", "operator": "regex", "values": ["user-1.*"]},
    {"attribute": "attributes.plan_seats", "operator": "gt", "values": [10]},
    {"attribute": "environment", "operator": "equals", "values": ["staging"]},
]


def random_definition(rng: random.Random, earlier: list[str]) -> dict[str, Any]:
    kind = rng.choice(["boolean", "percentage", "multivariate", "operational"])
    out: dict[str, Any] = {"type": kind, "default": False}
    if kind == "multivariate":
        out["default"] = "blue"
        out["variants"] = [{"name": n, "value": n, "weight": rng.randint(1, 5)}
                           for n in ("blue", "green", "red")[:rng.randint(1, 3)]]
    elif kind == "percentage" or (kind == "boolean" and rng.random() < 0.6):
        out["rollout"] = rng.choice([0, 12.5, 25, 50, 100])
    if rng.random() < 0.15:
        out["status"] = rng.choice(["draft", "archived"])
    if rng.random() < 0.1:
        out["kill_switch"] = True
    if rng.random() < 0.2:
        out["expires"] = rng.choice(["2026-01-14", "2026-01-15", "2026-01-16"])
    if rng.random() < 0.25:
        served = "blue" if kind == "multivariate" else rng.random() < 0.5
        out["environments"] = {rng.choice(["production", "staging"]): served}
    if rng.random() < 0.3:
        out["tiers"] = rng.sample(["free", "business", "enterprise"], rng.randint(1, 2))
    if earlier and rng.random() < 0.5:
        out["prerequisites"] = rng.sample(earlier, rng.randint(1, min(2, len(earlier))))
    if rng.random() < 0.4:
        out["targeting"] = rng.sample(RULES, rng.randint(1, 3))
    if rng.random() < 0.2:
        out["bucket_by"] = rng.choice(["tenant_id", "attributes.app_version"])
    return out


def random_route(rng: random.Random, most: int
                 ) -> tuple[list[str], dict[str, CompiledFlag], list[CompiledFlag]]:
    """A generated flag set of up to `most` flags (each may need earlier ones), and a
    route's flags taken from it."""
    keys = [f"f{i}" for i in range(rng.randint(1, most))]
    flags = compile_flags({key: random_definition(rng, keys[:i]) for i, key in enumerate(keys)})
    return keys, flags, [flags[k] for k in rng.sample(keys, rng.randint(1, len(keys)))]


def random_context(rng: random.Random) -> RequestContext:
    attributes = {}
    if rng.random() < 0.7:
        attributes["app_version"] = f"2.{rng.randint(0, 12)}.0"
    if rng.random() < 0.3:
        attributes["plan_seats"] = str(rng.randint(0, 20))
    return ctx(user_id=rng.choice([None, f"user-{rng.randint(0, 300)}"]),
               tenant_id=rng.choice([None, "acme", "globex", f"t{rng.randint(0, 9)}"]),
               subscription_tier=rng.choice([None, "free", "business", "enterprise"]),
               client_ip=rng.choice(["10.20.3.4", "192.0.2.9", "10.21.0.1"]),
               environment=rng.choice(["production", "production", "staging"]),
               attributes=attributes)


def reference(shown: list[CompiledFlag], flags: dict[str, CompiledFlag],
              context: RequestContext, today: int) -> tuple[list[tuple[str, str]],
                                                            Counter[Any]]:
    """What the route's request gets and counts, through `evaluate` and its memo."""
    memo: dict[str, Evaluation] = {}
    results = [evaluate(flag, context, flags, today, memo) for flag in shown]
    pairs = [r.pair for r in results]
    members = [r.member for r in results if r.member is not None]
    if members:
        pairs.append((SUMMARY, ", ".join(members)))
    return pairs, Counter(r.counter for r in memo.values())


def at(day: int) -> float:
    """An instant in the middle of `day` (days since the epoch)."""
    return day * 86400.0 + 43200.5


def served(plan: FlagPlan, context: RequestContext, day: int = TODAY
           ) -> tuple[list[tuple[str, str]], Counter[Any]]:
    """What the plan gives the upstream, and the counters it has incremented."""
    result = plan.decide(context, at(day))
    fields = list(result.fields.pairs)
    # The serialized form says the same as the pairs.
    assert result.fields.raw == b"".join(f"{n}: {v}\r\n".encode() for n, v in fields)
    return fields, Counter(result.counted.children)


@pytest.fixture(params=["inline", "functions"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a plan is generated: every prerequisite inlined (the usual case) and one
    function per prerequisite (what a dense prerequisite graph gets)."""
    if request.param == "functions":
        monkeypatch.setattr(plan_module, "INLINE_MAX", 0)
    return str(request.param)


def test_plan_matches_evaluate_over_generated_flag_sets(mode: str) -> None:
    rng = random.Random(20261127)
    compared = 0
    reasons: set[Reason] = set()
    for _ in range(60):
        keys = [f"f{i}" for i in range(rng.randint(1, 6))]
        flags = compile_flags({key: random_definition(rng, keys[:i])
                               for i, key in enumerate(keys)})
        shown_keys = rng.sample(keys, rng.randint(1, len(keys)))
        shown = [flags[k] for k in shown_keys]
        plan = FlagPlan(shown, flags, SUMMARY)
        for _ in range(40):
            context = random_context(rng)
            today = TODAY + rng.choice([0, 0, 0, 1])  # the plan re-settles on a new day
            want_pairs, want_counts = reference(shown, flags, context, today)
            got, got_counts = served(plan, context, today)
            assert got == want_pairs, (shown_keys, context, today)
            assert got_counts == want_counts, (shown_keys, context, today)
            memo: dict[str, Evaluation] = {}
            reasons.update(evaluate(f, context, flags, today, memo).reason for f in shown)
            compared += 1
    assert compared == 2400
    # The generator reached every reason but ERROR (tested below).
    assert reasons == set(Reason) - {Reason.ERROR}


def test_experiment_flags_report_their_split_with_the_unit_they_bucketed_by(mode: str
                                                                        ) -> None:
    """A measured flag decided by its split (on the route or as a prerequisite) is in
    `split` with its variant, and its unit is the value it bucketed by (handed out by
    inlined code; a plan of one function per prerequisite hands out none)."""
    rng = random.Random(20261202)
    reported = 0
    for _ in range(60):
        keys, flags, shown = random_route(rng, 6)
        measured = frozenset(rng.sample(keys, rng.randint(1, len(keys))))
        plan = FlagPlan(shown, flags, SUMMARY, experiment_flags=measured)
        for _ in range(30):
            context = random_context(rng)
            result = plan.decide(context, at(TODAY))
            assert result is not None
            memo: dict[str, Evaluation] = {}
            for flag in shown:
                evaluate(flag, context, flags, TODAY, memo)
            split = [memo[f.key] for f in plan.flags if f.key in measured and f.key in memo]
            assert [(key, variant) for key, variant, _ in result.split] == [
                (e.flag, e.variant) for e in split if e.reason is Reason.SPLIT]
            for key, _, position in result.split:
                if mode == "inline":
                    assert result.units[position] == flags[key].bucket_value(context)
                else:
                    assert result.units == ()
            reported += len(result.split)
    assert reported > 100


def test_prerequisite_outside_the_route_is_counted_only_when_reached(mode: str) -> None:
    flags = compile_flags({
        "gate": {"default": False, "targeting": [RULES[0]]},
        "f": {"default": False, "tiers": ["business"], "prerequisites": ["gate"]},
    })
    plan = FlagPlan([flags["f"]], flags, SUMMARY)
    _, free = served(plan, ctx(subscription_tier="free"))
    assert free == Counter({flags["f"].r_tier.counter: 1})  # "gate" never evaluated
    _, business = served(plan, ctx(subscription_tier="business", tenant_id="acme"))
    assert business == Counter({flags["f"].static.counter: 1, flags["gate"].static.counter: 1})


def test_internal_error_and_cycle_fail_closed_like_evaluate(mode: str) -> None:
    flags = compile_flags({"f": {"default": False, "targeting": [RULES[0]]}})

    def broken(_: object) -> bool:
        raise RuntimeError("boom")

    flags["f"].targets = (("tenant_id", broken),)
    plan = FlagPlan([flags["f"]], flags, None)
    assert served(plan, ctx(tenant_id="acme"))[0] == [("X-Flag-F", "false")]

    parsed: dict[str, Flag] = {}
    for key, other in (("a", "b"), ("b", "a")):
        flag, errors = parse_definition(CONFIG, key, {"default": False,
                                                      "prerequisites": [other]})
        assert flag is not None, errors
        parsed[key] = flag
    cyclic = {key: CompiledFlag(flag) for key, flag in parsed.items()}
    plan = FlagPlan([cyclic["a"], cyclic["b"]], cyclic, SUMMARY)
    want, counted = reference([cyclic["a"], cyclic["b"]], cyclic, ctx(), TODAY)
    # Same headers and the same evaluations counted (PREREQUISITE_FAILED, not ERROR).
    assert served(plan, ctx()) == (want, counted)
    assert [v for _, v in want[:2]] == ["false", "false"]


def test_expiry_takes_effect_on_the_next_day_without_a_rebuild(mode: str) -> None:
    flags = compile_flags({"f": {"default": False, "expires": "2026-01-15"}})
    plan = FlagPlan([flags["f"]], flags, None)
    assert served(plan, ctx())[0] == [("X-Flag-F", "true")]
    assert served(plan, ctx(), TODAY + 1)[0] == [("X-Flag-F", "false")]
    assert served(plan, ctx(environment="staging"))[0] == [("X-Flag-F", "true")]
    assert served(plan, ctx(), TODAY)[0] == [("X-Flag-F", "true")]  # a clock set back


def test_added_fields_serialize_once_and_refuse_control_characters() -> None:
    fields = AddedFields([("X-Flag-A", "true"), ("X-Feature-Flags", 'a=?1, b="x"')])
    assert fields.raw == b'X-Flag-A: true\r\nX-Feature-Flags: a=?1, b="x"\r\n'
    # Flag values with control characters are refused when flags are defined; should one
    # get here anyway, it is left to the header section's serializer, which refuses it.
    assert AddedFields([("X-Flag-F", "a\r\nX-Admin: 1")]).raw is None
    assert AddedFields([]).raw == b""


def test_dense_prerequisite_graph_stays_small_and_matches_evaluate(mode: str) -> None:
    """Each flag needing every earlier one would inline 2^n copies; past INLINE_MAX lines
    the plan is generated with one function per prerequisite instead."""
    definitions: dict[str, dict[str, Any]] = {}
    for i in range(14):
        definitions[f"f{i}"] = {"default": False, "rollout": 90,
                                "prerequisites": [f"f{j}" for j in range(i)]}
    flags = compile_flags(definitions)
    plan = FlagPlan([flags["f13"], flags["f0"]], flags, SUMMARY)
    rng = random.Random(3)
    for _ in range(50):
        context = random_context(rng)
        assert served(plan, context) == reference([flags["f13"], flags["f0"]], flags,
                                                  context, TODAY)
    assert len(plan.source.splitlines()) < 1000
    assert "def _prerequisite_" in plan.source  # in both modes: the inlined code was too long


SETTINGS = ContextSettings(
    trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
    fields={"user_id": HeaderSource("X-User-Id"), "tenant_id": HeaderSource("X-Tenant-Id"),
            "subscription_tier": HeaderSource("X-Tier", default="free")},
    attributes={"app_version": HeaderSource("X-App-Version"),
                "plan_seats": HeaderSource("X-Seats", default="12")})


def random_headers(rng: random.Random) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, values in (("X-User-Id", [f"user-{rng.randint(0, 300)}", "user-7\u00a0", ""]),
                         ("X-Tenant-Id", ["acme", "globex", "t3", ""]),
                         ("X-Tier", ["free", "business", "enterprise", "", "\u2003free"]),
                         ("X-App-Version", [f"2.{rng.randint(0, 12)}.0", "2.9.0\u3000", "x",
                                            ""]),
                         ("X-Seats", [str(rng.randint(0, 20)), ""]),
                         ("X-Forwarded-For", ["10.20.3.4", "192.0.2.9, 10.1.1.1"])):
        if rng.random() < 0.7:
            headers[name] = rng.choice(values)
    return headers


def test_plan_reading_headers_decides_as_with_a_built_context(mode: str) -> None:
    """decide_headers (a route that builds no context) and decide (one that does) give the
    very same result for every request: same fields read, same outcomes, same counts."""
    rng = random.Random(20261128)
    compared = 0
    for _ in range(40):
        _, flags, shown = random_route(rng, 5)
        environment = rng.choice(["production", "staging"])
        plan = FlagPlan(shown, flags, SUMMARY, SETTINGS, environment)
        for _ in range(30):
            headers = random_headers(rng)
            peer = rng.choice(["10.9.9.9", "198.51.100.1"])
            context, trusted = build_context(SETTINGS, peer, headers, environment=environment)
            now = at(TODAY)
            want = plan.decide(context, now)
            got = plan.decide_headers(headers, peer, trusted, now)
            assert got is want, (plan.source, headers, peer)
            # The generated code itself, as a caller keeping it (the engine) calls it.
            assert plan.from_headers(headers, peer, trusted, now) is want
            compared += 1
    assert compared == 1200
