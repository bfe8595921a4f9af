"""Per-type lifetimes (cache.asset_policies) and fingerprinted paths (cache.immutable_paths)
through the real gateway: what the client is told, and what the cache keeps."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.harness import REPO, InProcessGateway, Upstream, base_config, reference_config_with
from tests.integration.test_compression import fetch

Factory = Callable[..., Awaitable[InProcessGateway]]


def policy_config(upstream_url: str, **route_cache: Any) -> dict[str, Any]:
    config = base_config(upstream_url)
    config["cache"] = {
        "memory_max": "8MiB",
        "asset_policies": [
            {"types": ["application/javascript", "text/css"], "ttl": "365d",
             "browser_ttl": "1d"},
            {"types": ["image/*"], "ttl": "30d", "browser_ttl": "1d"},
            {"types": ["application/json"], "ttl": "5m", "browser_ttl": "1m"},
            {"types": ["text/csv"], "ttl": "1h", "browser_ttl": "10m", "override": True},
        ],
        "immutable_paths": r"\.[0-9a-f]{8,}\.(js|css|png)$",
    }
    config["routes"] = [
        {"name": "static", "match": {"path_prefix": "/s/"}, "upstream": "api",
         "cache": route_cache},
        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"},
    ]
    return config


def serving(content_type: str, status: int = 200, **headers: str
            ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 100, status=status, headers={
            "Content-Type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}})

    return handler


async def test_a_type_without_its_own_freshness_gets_the_policy_lifetimes(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/s/app.js", serving("application/javascript"))
    gw = await gateway_factory(policy_config(upstream.url))
    _, headers, _ = await fetch(f"{gw.url}/s/app.js")
    assert headers["Cache-Control"] == "max-age=86400"  # browser_ttl toward the client
    assert "Surrogate-Control" not in headers  # the edge lifetime is consumed here
    _, headers, _ = await fetch(f"{gw.url}/s/app.js")
    assert headers["X-Cache"] == "HIT"
    ttl = int(headers["Cache-Status"].split("ttl=")[1].split(";")[0])
    assert 365 * 86400 - 5 < ttl <= 365 * 86400  # a year at the edge
    assert upstream.count("/s/app.js") == 1


async def test_the_responses_own_freshness_wins_unless_the_policy_overrides(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/s/data.json", serving("application/json", Cache_Control="max-age=7"))
    upstream.on("/s/data.csv", serving("text/csv", Cache_Control="max-age=7"))
    gw = await gateway_factory(policy_config(upstream.url))
    _, headers, _ = await fetch(f"{gw.url}/s/data.json")
    assert headers["Cache-Control"] == "max-age=7"
    _, headers, _ = await fetch(f"{gw.url}/s/data.csv")
    assert headers["Cache-Control"] == "max-age=600"
    _, headers, _ = await fetch(f"{gw.url}/s/data.csv")
    assert headers["X-Cache"] == "HIT"
    assert 3595 <= int(headers["Cache-Status"].split("ttl=")[1].split(";")[0]) <= 3600


async def test_private_responses_and_errors_are_never_rewritten(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/s/me.json", serving("application/json", Cache_Control="private"))
    upstream.on("/s/gone.js", serving("application/javascript", status=404))
    gw = await gateway_factory(policy_config(upstream.url))
    _, headers, _ = await fetch(f"{gw.url}/s/me.json")
    assert headers["Cache-Control"] == "private"
    status, headers, _ = await fetch(f"{gw.url}/s/gone.js")
    assert status == 404 and "Cache-Control" not in headers


async def test_the_routes_own_ttl_is_more_specific_than_the_type_table(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/s/app.css", serving("text/css"))
    gw = await gateway_factory(policy_config(upstream.url, ttl="2m"))
    await fetch(f"{gw.url}/s/app.css")
    _, headers, _ = await fetch(f"{gw.url}/s/app.css")
    assert headers["X-Cache"] == "HIT"
    assert int(headers["Cache-Status"].split("ttl=")[1].split(";")[0]) <= 120
    assert headers["Cache-Control"] == "max-age=86400"  # the policy's browser_ttl


async def test_fingerprinted_paths_are_immutable_for_a_year(
        gateway_factory: Factory, upstream: Upstream) -> None:
    upstream.on("/s/app.0123abcd9f.js", serving("application/javascript",
                                                Cache_Control="max-age=60"))
    upstream.on("/x/logo.deadbeef00.png", serving("image/png"))
    gw = await gateway_factory(policy_config(upstream.url))
    _, headers, _ = await fetch(f"{gw.url}/s/app.0123abcd9f.js")
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    _, headers, _ = await fetch(f"{gw.url}/s/app.0123abcd9f.js")
    assert headers["X-Cache"] == "HIT"
    assert int(headers["Cache-Status"].split("ttl=")[1].split(";")[0]) > 31_536_000 - 5
    # An uncached route: the client is told all the same.
    _, headers, _ = await fetch(f"{gw.url}/x/logo.deadbeef00.png")
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_the_reference_config_with_compression_passes_gateway_check(tmp_path: Path) -> None:
    path = reference_config_with(tmp_path, "compression")
    done = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_demo_config_shows_the_ttl_table(tmp_path: Path) -> None:
    import yaml

    demo = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
    table = {tuple(p["types"]): (p["ttl"], p["browser_ttl"])
             for p in demo["cache"]["asset_policies"]}
    assert table[("application/javascript", "text/css")] == ("365d", "1d")
    assert table[("image/*", "font/*")] == ("30d", "1d")
    assert table[("application/json",)] == ("5m", "1m")
    done = subprocess.run([sys.executable, "-m", "gateway", "check", "--config",
                           str(REPO / "config" / "gateway.yaml")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
