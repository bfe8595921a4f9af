"""What a new user meets first: `gateway --help`, `gateway check`, `gateway demo`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import REPO, free_port, wait_for_port

MINIMAL = {
    "upstreams": {"api": {"url": "http://127.0.0.1:8000"}},
    "routes": [{"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"}],
}


def gateway(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(REPO))


def test_help_lists_no_internal_subcommand() -> None:
    out = gateway("--help").stdout
    assert "{run,check,demo,schema,experiment}" in out
    assert "worker" not in out and "SUPPRESS" not in out


def test_check_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    result = gateway("check", "--config", str(path))
    assert result.returncode == 1
    assert f"{path}: (file): is empty" in result.stdout


def test_check_reports_a_missing_file_without_a_line_number(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    result = gateway("check", "--config", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (f"{path}: (file): cannot read: No such file or "
                                             "directory")


def test_check_warns_of_identity_headers_without_trusted_proxies(tmp_path: Path) -> None:
    config = {**MINIMAL, "context": {"user_id": {"header": "X-User-Id"}}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(config))
    result = gateway("check", "--config", str(path))
    assert result.returncode == 0
    assert f"{path}: warning: context.user_id read request headers, but " \
           "context.trusted_proxies is empty" in result.stdout
    assert "OK" in result.stdout.splitlines()[-1]
    config["context"]["trusted_proxies"] = ["127.0.0.1/32"]
    path.write_text(yaml.safe_dump(config))
    assert "warning" not in gateway("check", "--config", str(path)).stdout


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """The repository's demo config, its upstreams moved to free ports."""
    data = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
    for upstream in data["upstreams"].values():
        upstream["url"] = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_demo_names_a_taken_port_instead_of_starting(demo_config: Path, held_port: int
                                                     ) -> None:
    result = gateway("demo", "--config", str(demo_config), "--port", str(held_port),
                     "--admin-port", str(free_port()))
    assert result.returncode == 1
    assert f"port {held_port} on 127.0.0.1 is taken by another program: needed by the " \
           "gateway (listen.port; --port)" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_refuses_to_proxy_to_a_stranger_on_the_upstream_port(
        demo_config: Path, held_port: int) -> None:
    data = yaml.safe_load(demo_config.read_text())
    data["upstreams"]["api"]["url"] = f"http://127.0.0.1:{held_port}"
    demo_config.write_text(yaml.safe_dump(data, sort_keys=False))
    result = gateway("demo", "--config", str(demo_config), "--port", str(free_port()),
                     "--admin-port", str(free_port()))
    assert result.returncode == 1
    assert f"port {held_port} on 127.0.0.1 is taken by another program: needed by demo " \
           "upstream 'api'" in result.stderr


def test_demo_serves_on_the_ports_given(demo_config: Path) -> None:
    port, admin = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--config",
                             str(demo_config), "--port", str(port), "--admin-port", str(admin)],
                            env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
        wait_for_port(admin, proc=proc)
        deadline = time.monotonic() + 10
        while True:  # the demo upstream may take a moment longer than the gateway
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/market/prices",
                                            timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_check_says_how_many_flagd_flags_it_loaded(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text('{"flags": {"k": {"state": "ENABLED", '
                                     '"variants": {"on": true}, "defaultVariant": "on"}}}')
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "flag_sources": [{"file": "f.json"}]}))
    result = gateway("check", "--config", str(path))
    assert result.returncode == 0
    assert f"{path}: 1 flagd flags from f.json" in result.stdout.splitlines()
