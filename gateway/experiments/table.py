"""`gateway experiment report NAME --admin URL`: the JSON report as a terminal table."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from gateway.experiments.html import fmt_number, fmt_p, fmt_percent


def fetch(admin: str, name: str, token: str | None = None) -> dict[str, Any]:
    url = f"{admin.rstrip('/')}/admin/experiments/{urllib.parse.quote(name, safe='')}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        found: dict[str, Any] = json.load(response)
        return found


def render(report: dict[str, Any], out: TextIO) -> None:
    status = report["status"]
    if status == "significant":
        status += f" ({report['variant']} is the {report['direction']})"
    out.write(f"{report['name']}: flag {report['flag']}, control {report['control']}, "
              f"{report['lifecycle']}\n")
    out.write(f"status: {status}\n")
    if report.get("stopped_by_guardrail"):
        out.write(f"stopped by a guardrail: {report['stopped_by_guardrail']}\n")
    units = ", ".join(f"{v} {fmt_number(n)}" for v, n in report["units"].items())
    out.write(f"units: {units}; sample ratio p {fmt_p(report['srm']['p_value'])}"
              f"{' MISMATCH' if report['srm']['mismatch'] else ''}\n")
    for metric in report["metrics"]:
        rate = metric["type"] in ("conversion", "error_rate")
        role = "primary" if metric["primary"] else ("guardrail" if metric["guardrail"] else "")
        out.write(f"\n{metric['name']} ({metric['type']}, goal {metric['goal']}"
                  f"{', ' + role if role else ''})\n")
        rows = [("variant", "n", "rate" if rate else "mean", "lift", "interval", "p")]
        for variant, level in metric["variants"].items():
            c = level.get("comparison")
            rows.append((
                variant, fmt_number(level["n"]),
                fmt_percent(level["value"]) if rate else fmt_number(level["value"]),
                fmt_number(c["difference"]) if c else "-",
                f"[{fmt_number(c['interval'][0])}, {fmt_number(c['interval'][1])}]" if c
                else "-",
                fmt_p(c["adjusted_p_value"]) + (" *" if c["significant"] else "") if c
                else "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            out.write("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                       for i, (cell, w) in enumerate(zip(row, widths,
                                                                         strict=True)))
                      + "\n")
        if metric.get("units_needed_per_variant"):
            out.write(f"  progress {fmt_percent(metric['progress'])} of "
                      f"{fmt_number(metric['units_needed_per_variant'])} units per variant\n")


def main(name: str, admin: str, token: str | None) -> int:
    try:
        report = fetch(admin, name, token)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        print(f"{admin}: {exc.code} for experiment {name!r}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach the admin listener at {admin}: {exc}", file=sys.stderr)
        return 1
    render(report, sys.stdout)
    return 0
