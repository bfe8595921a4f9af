"""`redis.cluster` settings: parsed, checked and warned about; and the pure helpers the
cluster's pub/sub subscription walks the nodes with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, load_config
from gateway.config.lint import redis_warnings
from gateway.redisconn import node_addresses, with_node
from tests.harness import SPEC_DIR


def reference_with_redis(tmp_path: Path, **redis: Any) -> Path:
    """The reference config with the `redis` keys of spec/next/scaleout.yaml, then `redis`."""
    data = yaml.safe_load((SPEC_DIR / "gateway.yaml").read_text())
    scaleout = yaml.safe_load((SPEC_DIR / "next" / "scaleout.yaml").read_text())
    data["redis"] = {**data.get("redis", {}), **scaleout["redis"], **redis}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_scaleout_redis_keys_parse_and_warn_about_nothing(tmp_path: Path) -> None:
    config = load_config(str(reference_with_redis(tmp_path)))
    assert config.redis is not None
    assert config.redis.cluster and config.redis.max_connections_per_node == 16
    assert redis_warnings(config) == []


def test_a_cluster_url_selecting_another_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(reference_with_redis(tmp_path, url="redis://:secret@127.0.0.1:7000/3")))
    message = str(info.value)
    assert "redis.url: a Redis Cluster has only database 0" in message
    assert "secret" not in message


def test_max_connections_per_node_must_be_a_positive_integer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(reference_with_redis(tmp_path, max_connections_per_node=0)))
    assert "redis.max_connections_per_node" in str(info.value)


@pytest.mark.parametrize(("redis", "warned"), [
    ({"cluster": True, "key_prefix": "{gw}:"}, "redis.key_prefix: '{gw}:' holds a hash tag"),
    ({"cluster": True, "max_connections": 200}, "redis.max_connections: sizes the pool"),
    ({"cluster": False, "url": "redis://127.0.0.1:6379/0", "max_connections_per_node": 4},
     "redis.max_connections_per_node: is used only with cluster: true"),
])
def test_settings_that_do_nothing_on_the_topology_are_warned_about(
        tmp_path: Path, redis: dict[str, Any], warned: str) -> None:
    config = load_config(str(reference_with_redis(tmp_path, **redis)))
    warnings = redis_warnings(config)
    assert len(warnings) == 1 and warnings[0].startswith(warned)


def test_a_prefix_with_braces_but_no_hash_tag_is_not_warned_about(tmp_path: Path) -> None:
    config = load_config(str(reference_with_redis(tmp_path, key_prefix="gw{:")))
    assert redis_warnings(config) == []


def test_the_subscription_tries_the_configured_node_first_then_every_other_once() -> None:
    known = [("127.0.0.1", 7002), ("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002)]
    assert node_addresses("redis://127.0.0.1:7001/0", known) == [
        ("127.0.0.1", 7001), ("127.0.0.1", 7000), ("127.0.0.1", 7002)]
    assert node_addresses("redis://10.0.0.5:7000", []) == [("10.0.0.5", 7000)]


def test_a_node_url_keeps_scheme_credentials_and_options() -> None:
    assert with_node("rediss://u:p%40ss@10.0.0.1:7000/0?ssl_cert_reqs=none", "10.0.0.2", 7005) \
        == "rediss://u:p%40ss@10.0.0.2:7005/0?ssl_cert_reqs=none"
    assert with_node("redis://127.0.0.1:7000", "::1", 7001) == "redis://[::1]:7001"
