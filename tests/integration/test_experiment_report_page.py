"""The report page in a real headless Chromium: it renders without console errors, a
screenshot is taken, and every number it shows equals the JSON report's.

Chromium comes from Debian's `chromium` package; .ci/run installs it when missing. Outside CI
a machine without it skips this test and says why; under CI (CI=true) it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gateway.experiments.html import fmt_number, fmt_p, fmt_percent
from tests.harness import InProcessGateway, Upstream, client_session
from tests.integration.test_experiments import browse, experiment_config, until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must have it (.ci/run installs it)")
        print(f"SKIPPED: {message}")
        pytest.skip(message)
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
             "--v=0", *args], capture_output=True, text=True, timeout=60, check=False)


class Fields(HTMLParser):
    """The text of every element with a data-field attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open.append(dict(attrs).get("data-field"))
        if self._open[-1] is not None:
            self.found[self._open[-1]] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for field in self._open:
            if field is not None:
                self.found[field] += data


async def test_the_report_page_renders_in_chromium_and_shows_the_json_numbers(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.experiments.engine.SNAPSHOT_EVERY", 0.5)  # a few points
    gw: InProcessGateway = await gateway_factory(experiment_config(upstream))
    served = await browse(gw, range(300))
    buyers = [u for u, v in served.items() if (v == "treatment") == (int(u[1:]) % 3 == 0)]
    async with client_session() as s:
        async with s.post(f"{gw.admin_url}/admin/events", json=[
                {"experiment": "checkout_test", "unit": u, "metric": "purchase"}
                for u in buyers[:120]]) as r:
            assert r.status == 202

        async def settled() -> dict[str, Any] | None:
            async with s.get(f"{gw.admin_url}/admin/experiments/checkout_test") as r:
                found: dict[str, Any] = await r.json()
            purchase = found["metrics"][0]["variants"]
            lifted = [p for p in found["snapshots"] if p["lift"]]
            done = sum(v["count"] for v in purchase.values()) == 120 and len(lifted) >= 2
            return found if done else None

        report = await until(settled)
        assert report is not None
        url = f"{gw.admin_url}/admin/experiments/checkout_test/report"
        async with s.get(url) as r:
            assert r.status == 200 and r.content_type == "text/html"
    # Chromium blocks the event loop's thread while it runs: run it beside the gateway.
    dom = await asyncio.to_thread(chromium, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    shot = tmp_path / "report.png"
    taken = await asyncio.to_thread(chromium, f"--screenshot={shot}", "--window-size=1280,1800",
                                    url)
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    print(f"screenshot: {shot}")

    fields = Fields()
    fields.feed(dom.stdout)
    shown = fields.found
    assert shown["status"].startswith(report["status"].replace("_", " "))
    assert shown["lifecycle"] == report["lifecycle"]
    assert f"(p {fmt_p(report['srm']['p_value'])})" in shown["srm.p_value"]
    for variant, units in report["units"].items():
        assert f"{variant}: {fmt_number(units)}" in shown["units"]
    checked = 0
    for index, metric in enumerate(report["metrics"]):
        rate = metric["type"] in ("conversion", "error_rate")
        for variant, level in metric["variants"].items():
            path = f"metrics.{index}.variants.{variant}"
            assert shown[f"{path}.n"] == fmt_number(level["n"])
            assert shown[f"{path}.value"] == (fmt_percent(level["value"]) if rate
                                              else fmt_number(level["value"]))
            comparison = level.get("comparison")
            if comparison is not None:
                low, high = comparison["interval"]
                assert shown[f"{path}.comparison.difference"] == \
                    fmt_number(comparison["difference"])
                assert shown[f"{path}.comparison.interval"] == \
                    f"[{fmt_number(low)}, {fmt_number(high)}]"
                assert shown[f"{path}.comparison.adjusted_p_value"] == \
                    fmt_p(comparison["adjusted_p_value"])
                checked += 1
    assert checked >= 2  # comparisons were there to check
    assert 'aria-label="lift over time"' in dom.stdout  # the chart, from the snapshots
