"""The real CLI refuses to start on a dependency that lacks a private name the gateway
relies on, naming the package and its version (a sitecustomize shim takes the name away
before the gateway is imported, as an upgrade that removed it would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import redis

from tests.harness import base_config, write_config

REPO = Path(__file__).resolve().parents[2]

REMOVE_SERIALIZER = """
import aiohttp.http_writer
del aiohttp.http_writer._serialize_headers
"""

REDIS_TWO_ARGUMENTS = """
import redis.asyncio

async def get_connection(self, command_name, key):
    raise AssertionError("never called")

redis.asyncio.BlockingConnectionPool.get_connection = get_connection
"""


def run_cli(tmp_path: Path, shim: str, *args: str) -> subprocess.CompletedProcess[str]:
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    (shim_dir / "sitecustomize.py").write_text(shim)
    config = write_config(tmp_path, base_config("http://127.0.0.1:9"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim_dir), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_run_refuses_to_start_without_a_private_name_and_names_package_and_version(
        tmp_path: Path) -> None:
    done = run_cli(tmp_path, REMOVE_SERIALIZER, "run")
    assert done.returncode == 1
    assert f"aiohttp {aiohttp.__version__}: gateway.wire." in done.stderr
    assert "_serialize_headers" in done.stderr
    assert done.stderr.rstrip().endswith("the gateway was not started")
    assert "Traceback" not in done.stderr


def test_check_reports_a_dependency_of_another_shape(tmp_path: Path) -> None:
    done = run_cli(tmp_path, REDIS_TWO_ARGUMENTS, "check")
    assert done.returncode == 1
    assert f"redis {redis.__version__}: redis.asyncio pools' get_connection" in done.stdout
    assert "install versions inside the pins of pyproject.toml" in done.stdout
