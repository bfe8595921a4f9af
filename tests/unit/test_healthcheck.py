"""The container health check finds the admin listener the gateway really uses."""

from __future__ import annotations

from gateway.config.model import Admin
from gateway.healthcheck import config_path, healthz_url


def test_config_path_given_then_main_process_then_environment() -> None:
    main = ["/usr/local/bin/python", "/usr/local/bin/gateway", "run", "--config", "/c/a.yaml"]
    env = {"GATEWAY_CONFIG": "/etc/gateway/gateway.yaml"}
    assert config_path("/given.yaml", main, env) == "/given.yaml"
    assert config_path(None, main, env) == "/c/a.yaml"
    assert config_path(None, ["gateway", "run", "--config=/c/b.yaml"], env) == "/c/b.yaml"
    assert config_path(None, ["gateway", "run"], env) == "/etc/gateway/gateway.yaml"
    assert config_path(None, ["gateway", "run", "--config"], {}) is None


def test_healthz_url_asks_a_wildcard_listener_over_loopback() -> None:
    assert healthz_url(Admin(host="127.0.0.1", port=9901)) == "http://127.0.0.1:9901/healthz"
    assert healthz_url(Admin(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000/healthz"
    assert healthz_url(Admin(host="::", port=9000)) == "http://[::1]:9000/healthz"
    assert healthz_url(Admin(host="10.1.2.3", port=1)) == "http://10.1.2.3:1/healthz"
