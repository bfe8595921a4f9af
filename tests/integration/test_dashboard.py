"""config/grafana/gateway.json asks only for metrics (and labels) the gateway exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import REPO, InProcessGateway, Upstream, client_session
from tests.integration.test_operations import cached_and_limited

DASHBOARD = REPO / "config" / "grafana" / "gateway.json"
_METRIC = re.compile(r"\bgateway_[a-z_]+\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"")


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def exposed(text: str) -> dict[str, set[str]]:
    """Every sample name in a /metrics page, with the label names it carries."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


async def test_every_metric_and_label_in_the_dashboard_is_exposed(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    config = cached_and_limited(upstream, {"tight": {
        "algorithm": "token_bucket", "scope": "user", "limit": 1, "window": "1h"}})
    config["flags"] = {"beta": {"type": "boolean", "default": False}}
    config["routes"][1]["flags"] = "all"
    config["upstreams"]["api"]["admission"] = {"max_concurrency": 10}
    gw: InProcessGateway = await gateway_factory(config)
    async with client_session() as s:
        for path in ("/c/page", "/c/page", "/other", "/other"):
            async with s.get(f"{gw.url}{path}", headers={"X-User-Id": "u1"}) as r:
                await r.read()
        async with s.post(f"{gw.admin_url}/admin/reload") as r:
            assert r.status == 200
        async with s.get(f"{gw.admin_url}/metrics") as r:
            samples = exposed(await r.text())
    exprs = queries()
    assert len(exprs) >= 12
    for expr in exprs:
        names = set(_METRIC.findall(expr))
        assert names, expr
        for name in names:
            assert name in samples, f"{name} (in {expr!r}) is not in /metrics"
        carried = set().union(*(samples[name] for name in names))
        wanted = {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
        wanted |= set(_MATCHER.findall(expr))
        assert wanted - {""} <= carried, f"{expr!r} uses labels {wanted - carried}"
