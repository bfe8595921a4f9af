"""`shards: N`: a rule's units dealt over N keys that add up to the rule exactly, requests of
one route handed round the shards in turn, and config errors for splits that cannot work."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.lint import shard_warnings
from gateway.config.model import Algorithm, RateLimitRule, Scope
from gateway.context import RequestContext
from gateway.ratelimit.plan import RoutePlan
from gateway.ratelimit.rules import shard_params
from tests.harness import reference_config_with


def test_the_reference_config_with_the_scaleout_keys_passes(tmp_path: Path) -> None:
    config = load_config(str(reference_config_with(tmp_path, "scaleout")))
    assert config.redis is not None and config.redis.cluster
    assert config.redis.max_connections_per_node == 16
    assert config.rate_limits["global_requests"].shards == 8


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("limit, burst, shards", [(100, 20, 8), (43, 7, 8), (8, 7, 8), (5, 4, 1)])
def test_shards_add_up_to_the_rule(algorithm: Algorithm, limit: int, burst: int,
                                   shards: int) -> None:
    parts = [shard_params(algorithm, limit, burst, shards, n) for n in range(shards)]
    assert sum(p[0] for p in parts) == limit and min(p[0] for p in parts) >= 1
    assert max(p[0] for p in parts) - min(p[0] for p in parts) <= 1
    if algorithm is Algorithm.LEAKY_BUCKET:  # capacity burst + 1 per shard
        assert sum(p[1] + 1 for p in parts) == burst + 1
    else:
        assert sum(p[1] for p in parts) == burst


def test_a_route_hands_its_requests_round_the_shards_whoever_sends_them() -> None:
    sharded = RateLimitRule("g", Algorithm.TOKEN_BUCKET, Scope("global"), 40, 60.0, shards=4)
    per_user = RateLimitRule("u", Algorithm.TOKEN_BUCKET, Scope("user"), 5, 60.0)
    plan = RoutePlan((sharded, per_user), 1, "gw:")
    keys = []
    for n in range(12):  # a new user each time: the turn is the route's, not the user's
        prepared = plan.prepare(RequestContext("192.0.2.1", user_id=f"u{n}"))
        assert prepared is not None
        keys.append(prepared.checks[0].keys[0])
        assert prepared.checks[0].limit == 10 and prepared.checks[1].limit == 5
    assert len(set(keys)) == 4 and all(keys.count(k) == 3 for k in set(keys))


def config_file(tmp_path: Path, rule: str, route: str = "rate_limits: [hot]",
                top: str = "", more: str = "") -> Path:
    """A config with rule `hot` (and the rules of `more`) and one route (`route`: its keys
    besides name, match and upstream); `top`: more top-level keys."""
    path = tmp_path / "g.yaml"
    path.write_text(f"""\
upstreams:
  api: {{url: "http://127.0.0.1:9"}}
{top}
rate_limits:
  hot: {rule}
  {more}
routes:
  - {{name: r, match: {{path_prefix: /}}, upstream: api, {route}}}
""")
    return path


def errors(tmp_path: Path, rule: str, route: str = "rate_limits: [hot]", more: str = ""
           ) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(str(config_file(tmp_path, rule, route, more=more)))
    return [str(i) for i in info.value.issues]


def test_shards_need_a_unit_of_limit_each(tmp_path: Path) -> None:
    [issue] = errors(tmp_path, "{algorithm: fixed_window, scope: global, limit: 4, "
                               "window: 1s, shards: 8}")
    assert "rate_limits.hot.shards" in issue and "limit of at least 8" in issue


def test_shards_of_a_leaky_bucket_need_a_unit_of_capacity_each(tmp_path: Path) -> None:
    [issue] = errors(tmp_path, "{algorithm: leaky_bucket, scope: global, limit: 100, "
                               "window: 1s, burst: 2, shards: 8}")
    assert "burst of at least 7" in issue


def test_a_tier_too_small_for_the_shards_is_named(tmp_path: Path) -> None:
    issues = errors(tmp_path, "{algorithm: token_bucket, scope: global, limit: 100, "
                              "window: 1s, shards: 8, tiers: {free: {limit: 3}}}")
    assert any("shards" in i and "(tier free)" in i and "here 3" in i for i in issues)


def test_a_sharded_rule_with_a_lease_is_refused(tmp_path: Path) -> None:
    [issue] = errors(tmp_path, "{algorithm: token_bucket, scope: global, limit: 1000, "
                               "window: 1s, shards: 4, lease: 10}")
    assert "rate_limits.hot.lease" in issue and "shards (4)" in issue
    assert "keep one of them" in issue


def test_a_route_cost_larger_than_the_smallest_shard_is_refused(tmp_path: Path) -> None:
    [issue] = errors(tmp_path, "{algorithm: fixed_window, scope: global, limit: 30, "
                               "window: 1s, shards: 8}", route="rate_limits: [hot], cost: 4")
    assert "routes[0].cost" in issue and "(3)" in issue


def test_shards_without_a_cluster_are_warned_about(tmp_path: Path) -> None:
    config = load_config(str(config_file(
        tmp_path, "{algorithm: fixed_window, scope: global, limit: 30, window: 1s, shards: 4}",
        top='redis: {url: "redis://127.0.0.1:7000/0"}')))
    [warning] = shard_warnings(config)
    assert warning.startswith("rate_limits.hot.shards: 4 shards on one Redis")
    cluster = load_config(str(reference_config_with(tmp_path, "scaleout")))
    assert shard_warnings(cluster) == []


def test_rules_of_different_shard_counts_each_get_their_shards_evenly() -> None:
    eight = RateLimitRule("g", Algorithm.FIXED_WINDOW, Scope("global"), 80, 60.0, shards=8)
    three = RateLimitRule("t", Algorithm.FIXED_WINDOW, Scope("global"), 30, 60.0, shards=3)
    plan = RoutePlan((eight, three), 1, "gw:")
    drawn = []
    for _ in range(240):
        prepared = plan.prepare(RequestContext("192.0.2.1"))
        assert prepared is not None
        drawn.append((prepared.checks[0].keys[0], prepared.checks[1].keys[0]))
    assert sorted(Counter(g for g, _ in drawn).values()) == [30] * 8
    assert sorted(Counter(t for _, t in drawn).values()) == [80] * 3


def test_shard_counts_whose_combinations_are_too_many_are_refused(tmp_path: Path) -> None:
    [issue] = errors(tmp_path, "{algorithm: fixed_window, scope: global, limit: 5000, "
                               "window: 1s, shards: 1000}", route="rate_limits: [hot, b]",
                     more="b: {algorithm: fixed_window, scope: global, limit: 5000, "
                          "window: 1s, shards: 999}")
    assert "routes[0].rate_limits" in issue and "999000" in issue
