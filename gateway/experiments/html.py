"""The report as one HTML page: server-rendered, inline SVG and CSS, no script.

Every number shown comes from the JSON report, formatted by `fmt_*` below, and carries the
JSON path it came from in `data-field`, so a test can check the page against the JSON.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import Any

DASH = "\u2013"  # an en dash: no value (yet)
STATUS_COLOURS = {
    "collecting": "#6b7280", "significant": "#047857", "no_effect": "#1d4ed8",
    "srm": "#b45309", "guardrail_tripped": "#b91c1c",
}
CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:72rem;color:#111827;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:2rem 0 .5rem}
.muted{color:#6b7280}.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;
color:#fff;font-weight:600;font-size:.85rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}.card{border:1px solid #e5e7eb;
border-radius:.5rem;padding:.75rem 1rem;min-width:12rem}.card b{display:block;font-size:1.2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{text-align:right;
padding:.35rem .6rem;border-bottom:1px solid #e5e7eb}th:first-child,td:first-child{
text-align:left}.sig{color:#047857;font-weight:600}.bad{color:#b91c1c;font-weight:600}
.bar{background:#e5e7eb;border-radius:.25rem;height:.6rem;width:16rem;display:inline-block}
.bar span{display:block;height:100%;background:#2563eb;border-radius:.25rem}
svg text{font:11px system-ui,sans-serif;fill:#374151}
"""


def fmt_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}f}"


def fmt_percent(value: Any) -> str:
    return DASH if value is None else f"{value * 100:.2f}%"


def fmt_p(value: Any) -> str:
    return DASH if value is None else (f"{value:.4f}" if value >= 0.0001 else "<0.0001")


def _time(value: float | None) -> str:
    if value is None:
        return DASH
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(text: str, field: str, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f'<td data-field="{escape(field)}"{klass}>{escape(text)}</td>'


def _interval_svg(rows: list[tuple[str, float, float, float]], width: int = 520) -> str:
    """Confidence bars: per treatment its interval of the difference, the estimate, and 0."""
    if not rows:
        return ""
    finite = [x for _, d, lo, hi in rows for x in (d, lo, hi) if math.isfinite(x)] + [0.0]
    span = max(abs(min(finite)), abs(max(finite))) or 1.0
    left, right = 110, width - 20

    def x(value: float) -> float:
        value = max(-span, min(span, value))
        return left + (value + span) / (2 * span) * (right - left)

    height = 26 * len(rows) + 24
    parts = [f'<svg role="img" aria-label="confidence intervals" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}">',
             f'<line x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="{height - 18}" '
             'stroke="#9ca3af" stroke-dasharray="3 3"/>',
             f'<text x="{x(0):.1f}" y="{height - 4}" text-anchor="middle">0</text>',
             f'<text x="{left}" y="{height - 4}">{-span:.3g}</text>',
             f'<text x="{right}" y="{height - 4}" text-anchor="end">{span:.3g}</text>']
    for i, (variant, diff, low, high) in enumerate(rows):
        y = 16 + 26 * i
        colour = "#2563eb"
        parts += [f'<text x="4" y="{y + 4}">{escape(variant)}</text>',
                  f'<line x1="{x(low):.1f}" y1="{y}" x2="{x(high):.1f}" y2="{y}" '
                  f'stroke="{colour}" stroke-width="6" stroke-linecap="round" opacity=".35"/>',
                  f'<circle cx="{x(diff):.1f}" cy="{y}" r="5" fill="{colour}"/>']
    parts.append("</svg>")
    return "".join(parts)


def _lift_svg(snapshots: list[dict[str, Any]], width: int = 620, height: int = 220) -> str:
    """The primary metric's lift per treatment over time, with its interval as a band."""
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    for point in snapshots:
        for variant, lift in point.get("lift", {}).items():
            low, high = lift["interval"]
            series.setdefault(variant, []).append((point["at"], lift["difference"], low, high))
    if not series:
        return '<p class="muted">No snapshot yet: one is taken every minute while the ' \
               'experiment runs.</p>'
    times = [t for s in series.values() for t, *_ in s]
    values = [v for s in series.values() for _, *vs in s for v in vs if math.isfinite(v)]
    values.append(0.0)
    t0, t1 = min(times), max(times) if max(times) > min(times) else min(times) + 1
    v0, v1 = min(values), max(values) if max(values) > min(values) else min(values) + 1
    left, top, right, bottom = 50, 10, width - 10, height - 24

    def px(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * (right - left)

    def py(v: float) -> float:
        v = max(v0, min(v1, v))
        return bottom - (v - v0) / (v1 - v0) * (bottom - top)

    colours = ("#2563eb", "#db2777", "#059669", "#d97706")
    parts = [f'<svg role="img" aria-label="lift over time" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             f'<line x1="{left}" y1="{py(0):.1f}" x2="{right}" y2="{py(0):.1f}" '
             'stroke="#9ca3af" stroke-dasharray="3 3"/>',
             f'<text x="4" y="{py(v1) + 4:.1f}">{v1:.3g}</text>',
             f'<text x="4" y="{py(v0):.1f}">{v0:.3g}</text>']
    for i, (variant, points) in enumerate(sorted(series.items())):
        colour = colours[i % len(colours)]
        upper = " ".join(f"{px(t):.1f},{py(hi):.1f}" for t, _, _, hi in points)
        lower = " ".join(f"{px(t):.1f},{py(lo):.1f}" for t, _, lo, _ in reversed(points))
        line = " ".join(f"{px(t):.1f},{py(d):.1f}" for t, d, _, _ in points)
        parts += [f'<polygon points="{upper} {lower}" fill="{colour}" opacity=".15"/>',
                  f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>',
                  f'<text x="{right}" y="{top + 12 + 14 * i}" text-anchor="end" '
                  f'fill="{colour}">{escape(variant)}</text>']
    parts.append("</svg>")
    return "".join(parts)


def _metric_section(index: int, metric: dict[str, Any], control: str) -> str:
    rate = metric["type"] in ("conversion", "error_rate")
    kind = metric["type"].replace("_", " ")
    role = "primary" if metric["primary"] else ("guardrail" if metric["guardrail"] else "")
    head = (f'<h2>{escape(metric["name"])} <span class="muted">{escape(kind)}, goal '
            f'{escape(metric["goal"])}{", " + role if role else ""}</span></h2>')
    rows = []
    bars: list[tuple[str, float, float, float]] = []
    base = f"metrics.{index}.variants"
    for variant, level in metric["variants"].items():
        path = f"{base}.{variant}"
        comparison = level.get("comparison")
        value = fmt_percent(level["value"]) if rate else fmt_number(level["value"])
        cells = [f"<td>{escape(variant)}{' (control)' if variant == control else ''}</td>",
                 _cell(fmt_number(level["n"]), f"{path}.n"),
                 _cell(value, f"{path}.value")]
        if metric["type"] == "latency":
            cells += [_cell(fmt_number(level.get("p50")), f"{path}.p50"),
                      _cell(fmt_number(level.get("p95")), f"{path}.p95")]
        if comparison is None:
            cells += [f"<td>{DASH}</td>"] * 3
        else:
            low, high = comparison["interval"]
            css = "bad" if comparison.get("harmful") else ("sig" if comparison["significant"]
                                                           else "")
            cells += [_cell(fmt_number(comparison["difference"]),
                            f"{path}.comparison.difference", css),
                      _cell(f"[{fmt_number(low)}, {fmt_number(high)}]",
                            f"{path}.comparison.interval"),
                      _cell(fmt_p(comparison["adjusted_p_value"]),
                            f"{path}.comparison.adjusted_p_value", css)]
            bars.append((variant, comparison["difference"], low, high))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    latency_heads = "<th>p50 (s)</th><th>p95 (s)</th>" if metric["type"] == "latency" else ""
    table = (f"<table><thead><tr><th>variant</th><th>n</th><th>{'rate' if rate else 'mean'}"
             f"</th>{latency_heads}<th>lift</th><th>interval</th><th>p</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    extra = ""
    if metric.get("unexposed_events"):
        extra = (f'<p class="muted">Events of units never exposed (not counted): '
                 f'<span data-field="metrics.{index}.unexposed_events">'
                 f'{fmt_number(metric["unexposed_events"])}</span></p>')
    return head + table + _interval_svg(bars) + extra


def render_report(report: dict[str, Any]) -> str:
    status = report["status"]
    colour = STATUS_COLOURS.get(status, "#6b7280")
    verdict = status.replace("_", " ")
    if status == "significant":
        verdict += f": {report['variant']} is the {report['direction']}"
        if report["direction"] == "loser":
            colour = STATUS_COLOURS["guardrail_tripped"]
    primary = next((m for m in report["metrics"] if m["primary"]), None)
    progress = primary.get("progress") if primary else None
    needed = primary.get("units_needed_per_variant") if primary else None
    cards = [
        ("Units", " / ".join(f"{v}: {fmt_number(n)}" for v, n in report["units"].items()),
         "units"),
        ("Sample ratio", ("mismatch" if report["srm"]["mismatch"] else "as configured")
         + f" (p {fmt_p(report['srm']['p_value'])})", "srm.p_value"),
        ("Lifecycle", report["lifecycle"], "lifecycle"),
        ("Started", _time(report["started"]), "started"),
    ]
    card_html = "".join(f'<div class="card"><span class="muted">{escape(title)}</span>'
                        f'<b data-field="{field}">{escape(text)}</b></div>'
                        for title, text, field in cards)
    if needed:
        share = min(progress or 0.0, 1.0)
        card_html += (f'<div class="card"><span class="muted">Progress to {fmt_number(needed)}'
                      f' units per variant</span><b data-field="metrics.primary.progress">'
                      f'{fmt_percent(progress)}</b><span class="bar"><span style="width:'
                      f'{share * 100:.1f}%"></span></span></div>')
    stopped = ""
    if report.get("stopped_by_guardrail"):
        stopped = (f'<p class="bad" data-field="stopped_by_guardrail">Stopped by a guardrail: '
                   f'{escape(report["stopped_by_guardrail"])}</p>')
    sections = "".join(_metric_section(i, metric, report["control"])
                       for i, metric in enumerate(report["metrics"]))
    mode = "sequential (always-valid p-values)" if report["sequential"] else "fixed horizon"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(report['name'])}: experiment report</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>{escape(report['name'])}</h1>"
        f'<p class="muted">flag <code>{escape(report["flag"])}</code>, control '
        f'<code>{escape(report["control"])}</code>, significance {report["significance"]}, '
        f'{mode}</p>'
        f'<p><span class="badge" style="background:{colour}" data-field="status">'
        f"{escape(verdict)}</span></p>{stopped}"
        f'<div class="cards">{card_html}</div>'
        f"<h2>Lift over time <span class=muted>(primary metric)</span></h2>"
        f"{_lift_svg(report.get('snapshots', []))}{sections}"
        f'<p class="muted">Generated {_time(report["generated"])}.</p></body></html>'
    )
