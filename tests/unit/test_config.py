"""`gateway check` semantics: every error at once, as FILE:LINE: dotted.path: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.model import (
    Algorithm,
    EscapedSlashes,
    FailureMode,
    HeaderStyle,
    WhenAbsent,
)
from tests.harness import REPO, SPEC_DIR, reference_config_with


def check(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    return [str(i) for i in info.value.issues]


MINIMAL = """\
upstreams:
  api: {url: "http://127.0.0.1:8000"}
routes:
  - name: default
    match: {path_prefix: /}
    upstream: api
"""


def test_reference_config_from_the_contract_passes() -> None:
    config = load_config(str(SPEC_DIR / "gateway.yaml"))
    assert config.workers == 2
    assert config.redis is not None and config.redis.failure_mode is FailureMode.OPEN
    assert config.redis.timeout == pytest.approx(0.05)
    assert config.rate_limits["analytics"].algorithm is Algorithm.LEAKY_BUCKET
    assert config.rate_limits["analytics"].window == 3600
    assert config.rate_limits["tenant_requests"].tiers["free"].limit == 1000
    assert config.rate_limit_headers is HeaderStyle.IETF
    assert config.cache.memory_max == 256 * 1024**2
    assert [r.name for r in config.routes] == ["auth", "market", "reports", "admin-api",
                                               "default"]
    assert config.routes[-1].flags == tuple(config.flags)  # flags: all
    assert config.routes[2].upstream.for_method("GET") == "api_replica"
    assert config.routes[2].upstream.for_method("POST") == "api"


def test_reference_config_with_the_hardening_keys_passes(tmp_path: Path) -> None:
    config = load_config(str(reference_config_with(tmp_path, "hardening")))
    listen = config.listen
    assert (listen.header_timeout, listen.idle_timeout, listen.body_timeout) == (10, 60, 30)
    assert listen.max_connections == 10_000 and listen.merge_slashes
    assert listen.escaped_slashes is EscapedSlashes.KEEP and not listen.underscores_in_headers
    assert config.logging.bad_request_lines_per_second == 10
    assert config.rate_limits_local_max_keys == 100_000
    assert config.rate_limits["user_requests"].when_absent is WhenAbsent.IP
    assert config.rate_limits["tenant_requests"].when_absent is WhenAbsent.SKIP


def test_when_absent_is_refused_where_the_scope_is_always_there(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(MINIMAL + "rate_limits:\n  r: {algorithm: fixed_window, scope: ip, limit: 1, window: 1s, "
                    "when_absent: reject}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "when_absent applies to rules scoped by user" in str(info.value.issues[0])


def test_cli_check_passes_on_reference_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(SPEC_DIR / "gateway.yaml")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and "5 routes" in result.stdout


def test_cli_check_reports_every_error_with_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL.replace("upstream: api", "upstream: apii")
                    + "workerz: 2\nlisten: {port: 99999}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{path}:6: routes[0].upstream: unknown upstream 'apii' (did you mean 'api'?)" in lines
    assert f"{path}:7: workerz: unknown key 'workerz' (did you mean 'workers'?)" in lines
    assert f"{path}:8: listen.port: must be at most 65535, got 99999" in lines


def test_config_env_var_stands_in_for_flag(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(MINIMAL)
    result = subprocess.run([sys.executable, "-m", "gateway", "check"], capture_output=True,
                            text=True, cwd=REPO, env={"GATEWAY_CONFIG": str(path),
                                                      "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_redis_url_env_overrides_only_an_existing_redis_block(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL)
    assert load_config(str(path), {"REDIS_URL": "redis://10.0.0.1:6380/1"}).redis is None
    path.write_text(MINIMAL + "redis: {url: 'redis://127.0.0.1:6379/0'}\n")
    config = load_config(str(path), {"REDIS_URL": "redis://10.0.0.1:6380/1"})
    assert config.redis is not None and config.redis.url == "redis://10.0.0.1:6380/1"


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    errors = check(tmp_path, "routes: [\n  {name: x\n")
    assert len(errors) == 1 and "(yaml): invalid YAML" in errors[0]


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    errors = check(tmp_path, MINIMAL + "workers: 1\nworkers: 2\n")
    assert any("duplicate key 'workers'" in e for e in errors)


@pytest.mark.parametrize(("snippet", "expected"), [
    ("rate_limits: {r: {algorithm: token_bukket, scope: user, limit: 5, window: 1s}}",
     "rate_limits.r.algorithm: must be one of token_bucket, leaky_bucket, sliding_window, "
     "fixed_window; got 'token_bukket' (did you mean 'token_bucket'?)"),
    ("rate_limits: {r: {algorithm: token_bucket, scope: user, limit: -1, window: 1s}}",
     "rate_limits.r.limit: must be at least 1, got -1"),
    ("rate_limits: {r: {algorithm: token_bucket, scope: user, limit: 5, window: 0}}",
     "rate_limits.r.window: must be longer than 0, got 0"),
    ("rate_limits: {r: {algorithm: token_bucket, scope: planet, limit: 5, window: 1s}}",
     "rate_limits.r.scope: must be one of global, tenant, user, ip, api_key, attribute:<name>"),
    ("rate_limits: {r: {algorithm: token_bucket, scope: user, limit: 5, window: 1s, "
     "tiers: {free: {}}}}",
     "rate_limits.r.tiers.free: a tier override must change limit, burst or window"),
    ("rate_limits: {r: {algorithm: token_bucket, scope: 'attribute:plan', limit: 5, "
     "window: 1s}}", "rate_limits.r.scope: context has no custom attribute 'plan'"),
    ("rate_limits: {r: {algorithm: token_bucket, scope: user, limit: 5, window: 1s, "
     "tiers: {gold: {limit: 9}}}}",
     "rate_limits.r.tiers: tier overrides need context.subscription_tier"),
    ("flags: {a: {prerequisites: [b]}, b: {prerequisites: [a]}}",
     "prerequisite cycle: a -> b -> a"),
    ("flags: {a: {prerequisites: [zz]}}", "flags.a.prerequisites: unknown flag 'zz'"),
    ("flags: {a: {targeting: [{attribute: user_id, operator: regex, values: ['(a+)+$']}]}}",
     "unsafe regex"),
    ("flags: {a: {targeting: [{attribute: user_id, operator: regex, values: ['(']}]}}",
     "invalid regex"),
    ("flags: {a: {targeting: [{attribute: client_ip, operator: cidr, values: [nope]}]}}",
     "not an IP network"),
    ("flags: {a: {targeting: [{attribute: planet, operator: equals, values: [x]}]}}",
     "flags.a.targeting[0].attribute: unknown attribute 'planet'"),
    ("cache: {redis: true}", "cache.redis: true needs a redis block"),
    ("redis: {url: 'http://x'}", "redis.url: must start with redis://"),
    ("experiments: {e: {flag: nope, control: c}}", "experiments.e.flag: unknown flag 'nope'"),
    ("compression: {encodings: [gzip, lz4]}", "compression.encodings: must be one of"),
    ("compression: {encodings: [gzip, gzip]}", "compression.encodings: lists an encoding twice"),
    ("compression: {level: {gzip: 12}}",
     "compression.level.gzip: must be at most 9, got 12 (gzip levels run from 1 to 9)"),
    ("compression: {level: {brotli: 5}}",
     "compression.level.brotli: unknown encoding 'brotli'"),
    ("compression: {types: [json]}",
     "compression.types: 'json' is no media type or range (type/subtype or type/*)"),
    ("cache: {asset_policies: [{types: [text/css]}]}",
     "cache.asset_policies[0]: needs a ttl, a browser_ttl or both"),
    ("cache: {immutable_paths: '('}", "cache.immutable_paths: invalid regex"),
])
def test_specific_errors(tmp_path: Path, snippet: str, expected: str) -> None:
    errors = check(tmp_path, MINIMAL + snippet + "\n")
    assert any(expected in e for e in errors), errors


def test_route_references(tmp_path: Path) -> None:
    errors = check(tmp_path, MINIMAL.replace(
        "upstream: api", "upstream: api\n    rate_limits: [nope]\n    flags: [nah]"))
    assert any("routes[0].rate_limits: unknown rate-limit rule 'nope'" in e for e in errors)
    assert any("routes[0].flags: unknown flag 'nah'" in e for e in errors)


def test_every_error_reported_together(tmp_path: Path) -> None:
    errors = check(tmp_path, "listen: {prot: 1}\nworkers: 0\nroutes: []\n")
    assert len(errors) >= 3
    assert errors == sorted(errors, key=lambda e: int(e.split(":")[1]))


def test_route_cost_beyond_what_a_rule_ever_admits(tmp_path: Path) -> None:
    text = MINIMAL + "    rate_limits: [r]\n    cost: 4\n" + (
        "rate_limits: {r: {algorithm: leaky_bucket, scope: user, limit: 50, window: 1s, "
        "burst: 2}}\n")
    errors = check(tmp_path, text)
    assert any("routes[0].cost: 4 is more than rule 'r' can ever admit at once (3)" in e
               for e in errors), errors
    (tmp_path / "ok.yaml").write_text(text.replace("burst: 2", "burst: 3"))
    assert load_config(str(tmp_path / "ok.yaml")).routes[0].cost == 4


def test_reference_config_with_the_experiment_keys_passes(tmp_path: Path) -> None:
    from gateway.config.model import ExperimentStatus, Goal, MetricType

    config = load_config(str(reference_config_with(tmp_path, "experiments")))
    exp = config.experiments["checkout_button_test"]
    assert exp.status is ExperimentStatus.RUNNING and exp.sequential and exp.auto_stop
    metrics = {metric.name: metric for metric in exp.metrics}
    assert metrics["purchase"].primary and metrics["purchase"].type is MetricType.CONVERSION
    assert metrics["order_value"].type is MetricType.MEAN
    assert metrics["order_value"].minimum_detectable_effect == 5.0
    assert metrics["checkout_completed"].route == "default"
    assert metrics["checkout_completed"].statuses == (200, 300)
    assert metrics["upstream_errors"].type is MetricType.ERROR_RATE
    assert metrics["upstream_latency"].goal is Goal.DECREASE and metrics["upstream_latency"].guardrail


def test_experiment_metrics_are_checked_with_their_lines(tmp_path: Path) -> None:
    base = MINIMAL + """flags:
  f: {type: multivariate, default: a, variants: [{name: a, value: a, weight: 50}, {name: b, value: b, weight: 50}]}
  solo: {type: multivariate, default: a, variants: [{name: a, value: a, weight: 100}]}
experiments:
  e:
    flag: f
    control: a
    status: runing
    metrics:
      - {name: m1, route: nowhere, status: 2xx}
      - {name: m2, type: mean, baseline_rate: 0.1}
      - {name: m3, route: default}
      - {name: m3, primary: true, guardrail: true, status: 7xx, route: default}
  s: {flag: solo, control: a}
"""
    errors = "\n".join(check(tmp_path, base))
    assert "experiments.e.status: must be one of" in errors
    assert "metric 'm1': unknown route 'nowhere'" in errors
    assert "baseline_rate: applies to conversion and error_rate metrics, not mean" in errors
    assert "needs both route and status" in errors
    assert "a metric is either the primary one or a guardrail" in errors
    assert "expected a status class such as 2xx" in errors
    assert "metric 'm3' is named twice" in errors
    assert "flag 'solo' splits no traffic between variants" in errors
