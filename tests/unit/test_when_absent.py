"""`when_absent` of a rate-limit rule (pure parts), and the warnings `gateway check` prints
for a configuration that is valid but leaves a door open."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.config.lint import admin_warnings, route_limit_warnings
from gateway.config.model import (
    Action,
    Admin,
    Algorithm,
    Config,
    RateLimitRule,
    Route,
    Scope,
    WhenAbsent,
)
from gateway.context import RequestContext
from gateway.ratelimit.plan import RoutePlan
from gateway.ratelimit.rules import rule_keys
from tests.harness import reference_config_with

ANONYMOUS = RequestContext("203.0.113.9")


def rule(name: str = "r", scope: str = "user", when_absent: WhenAbsent = WhenAbsent.SKIP,
         **kw: object) -> RateLimitRule:
    kind, _, attribute = scope.partition(":")
    return RateLimitRule(name, Algorithm.FIXED_WINDOW, Scope(kind, attribute or None),  # type: ignore[arg-type]
                         10, 60.0, when_absent=when_absent, **kw)  # type: ignore[arg-type]


def test_per_address_keys_differ_from_the_rules_own_and_from_an_ip_rule_of_that_name() -> None:
    fallback = rule_keys("gw:", "r", Algorithm.TOKEN_BUCKET, "203.0.113.9", by_ip=True)
    assert fallback == ("gw:{rl:bb0e5871}:r:@ip:tb2:203.0.113.9",)
    assert fallback != rule_keys("gw:", "r", Algorithm.TOKEN_BUCKET, "203.0.113.9")
    assert rule_keys("gw:", "r", Algorithm.SLIDING_WINDOW, "::1", by_ip=True) == (
        "gw:{rl:a2ca6717}:r:@ip:sw3:::1",)


def test_when_absent_ip_counts_per_address_and_the_plan_caches_per_address() -> None:
    plan = RoutePlan((rule(when_absent=WhenAbsent.IP), rule("g", "global")), 1, "p:")
    first = plan.prepare(ANONYMOUS)
    other = plan.prepare(RequestContext("203.0.113.10"))
    assert first is not None and other is not None and first is not other
    assert first.checks[0].keys == ("p:{rl:bb0e5871}:r:@ip:fw2:203.0.113.9",)
    identified = plan.prepare(RequestContext("203.0.113.9", user_id="u1"))
    assert identified is not None and identified.checks[0].keys == ("p:{rl:424f9f76}:r:fw2:u1",)


def test_when_absent_reject_refuses_only_requests_lacking_the_value() -> None:
    plan = RoutePlan((rule(when_absent=WhenAbsent.REJECT), rule("t", "tenant")), 1, "p:")
    refused = plan.prepare(ANONYMOUS)
    assert refused is not None and [r.name for r in refused.absent] == ["r"]
    assert refused.checks == ()
    admitted = plan.prepare(RequestContext("203.0.113.9", user_id="u1"))
    assert admitted is not None and admitted.absent == ()


@pytest.mark.parametrize("soft", [{"shadow": True}, {"action": Action.DEGRADE}])
def test_a_rule_that_never_blocks_never_refuses_for_want_of_a_value(soft: dict[str, object]
                                                                     ) -> None:
    plan = RoutePlan((rule(when_absent=WhenAbsent.REJECT, **soft),), 1, "p:")
    assert plan.prepare(ANONYMOUS) is None


def config(*routes: tuple[str, tuple[RateLimitRule, ...]], admin: Admin | None = None
           ) -> Config:
    rules = {r.name: r for _, group in routes for r in group}
    return Config(source="t.yaml", admin=admin or Admin(), rate_limits=rules, routes=tuple(
        Route(name, None, "api", rate_limits=tuple(r.name for r in group))  # type: ignore[arg-type]
        for name, group in routes))


def test_a_route_whose_every_rule_can_be_skipped_is_warned_about() -> None:
    warnings = route_limit_warnings(config(
        ("open", (rule("u"), rule("a", "attribute:plan"))),
        ("by_ip", (rule("u"), rule("i", "ip"))),
        ("fallback", (rule("f", when_absent=WhenAbsent.IP),)),
        ("refusing", (rule("x", when_absent=WhenAbsent.REJECT),)),
        ("unlimited", ()),
    ))
    assert len(warnings) == 1
    assert warnings[0].startswith("routes[0] (open): a request can skip every rate limit")
    assert "u without a user id; a without the attribute 'plan'" in warnings[0]


def test_no_token_on_a_non_loopback_admin_listener_is_warned_about() -> None:
    exposed = Admin(host="0.0.0.0", token_env="GW_T")
    assert admin_warnings(config(admin=exposed), {})[0].startswith("admin.host: '0.0.0.0'")
    assert "GW_T" in admin_warnings(config(admin=exposed), {"GW_T": ""})[0]
    assert admin_warnings(config(admin=exposed), {"GW_T": "secret"}) == []
    for host in ("127.0.0.1", "::1", "localhost", "127.1.2.3"):
        assert admin_warnings(config(admin=Admin(host=host)), {}) == []


def test_gateway_check_prints_the_warnings_and_exits_0(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "admin": {"host": "0.0.0.0"},
        "upstreams": {"api": {"url": "http://127.0.0.1:1"}},
        "rate_limits": {"per_user": {"algorithm": "token_bucket", "scope": "user",
                                     "limit": 5, "window": "1s"}},
        "routes": [{"name": "api", "match": {"path_prefix": "/"}, "upstream": "api",
                    "rate_limits": ["per_user"]}],
    }))
    assert main(["check", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1] for line in lines] == ["warning", "warning", "OK"]
    assert "admin.host" in lines[0] and "routes[0] (api)" in lines[1]


def test_the_reference_config_with_the_hardening_keys_checks_clean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = reference_config_with(tmp_path, "hardening")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out and ": OK: " in out
