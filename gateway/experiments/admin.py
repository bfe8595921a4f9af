"""Admin calls for experiments: events from the service, reports, status changes.

POST /admin/events takes one event or a list of up to MAX_EVENTS. Every item is checked on
its own: the good ones are recorded even when others are refused, and the 400 names each
bad item by its index with what is wrong, so a client can fix and resend only those (an
`event_id` makes resending safe).
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from aiohttp import web

from gateway.admin import ADMIN_ROUTES, PROCESS, Refused, json_object
from gateway.config.model import ExperimentStatus, MetricType
from gateway.experiments.engine import Experiments
from gateway.experiments.html import render_report
from gateway.problem import problem
from gateway.redisconn import RedisUnavailable

MAX_EVENTS = 1000
MAX_TEXT = 256  # units and event ids: longer ones are refused, not cut
_TEXT = re.compile(r"^[\x21-\x7e][\x20-\x7e]*$")  # printable ASCII, no leading space
_EVENT_KEYS = {"experiment", "unit", "metric", "value", "event_id"}


def _experiments(request: web.Request) -> Experiments:
    found = request.app[PROCESS].pipeline.runtime.experiments
    if found is None:
        raise Refused(problem(404, "the configuration defines no experiment"))
    return found


def _named(request: web.Request) -> tuple[Experiments, str]:
    experiments = _experiments(request)
    name = request.match_info["name"]
    if name not in experiments.experiments:
        raise Refused(problem(404, f"no experiment named {name!r}"))
    return experiments, name


def _text(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        return None
    return value if len(value) <= MAX_TEXT and _TEXT.match(value) else None


def check_event(experiments: Experiments, item: object) -> tuple[str, str, str, float,
                                                                str | None] | str:
    """(experiment, metric, unit, value, event_id), or what is wrong with the item."""
    if not isinstance(item, dict):
        return f"an event is a JSON object, got {type(item).__name__}"
    unknown = sorted(set(item) - _EVENT_KEYS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    name = item.get("experiment")
    if not isinstance(name, str) or name not in experiments.experiments:
        return f"unknown experiment {name!r}"
    experiment = experiments.experiments[name]
    if experiments.status[name] is not ExperimentStatus.RUNNING:
        return f"experiment {name!r} is {experiments.status[name].value}: only a running " \
               "experiment records events"
    metric_name = item.get("metric")
    metric = next((m for m in experiment.metrics if m.name == metric_name), None)
    if metric is None:
        return f"experiment {name!r} has no metric {metric_name!r}"
    if metric.route is not None or metric.type in (MetricType.ERROR_RATE, MetricType.LATENCY):
        return f"metric {metric.name!r} is measured by the gateway, not sent as events"
    unit = _text(item, "unit")
    if unit is None:
        return f"'unit' must be a non-empty string of printable ASCII, at most {MAX_TEXT} " \
               "characters"
    event_id = None
    if "event_id" in item:
        event_id = _text(item, "event_id")
        if event_id is None:
            return f"'event_id' must be a non-empty string of printable ASCII, at most " \
                   f"{MAX_TEXT} characters"
    value = item.get("value", 1.0 if metric.type is MetricType.CONVERSION else None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        return f"'value' must be a finite number (metric {metric.name!r} is a " \
               f"{metric.type.value} and " + ("needs one)" if metric.type is MetricType.MEAN
                                              else "counts units with any value)")
    return name, metric.name, unit, float(value), event_id


async def post_events(request: web.Request) -> web.Response:
    experiments = _experiments(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return problem(400, f"the body is not valid JSON: {exc}")
    items = body if isinstance(body, list) else [body]
    if not items or len(items) > MAX_EVENTS:
        return problem(400, f"send one event or a list of 1 to {MAX_EVENTS} events, "
                            f"got {len(items)}")
    errors: list[dict[str, Any]] = []
    accepted = 0
    for index, item in enumerate(items):
        checked = check_event(experiments, item)
        if isinstance(checked, str):
            errors.append({"index": index, "error": checked})
            continue
        experiments.recorder.event(*checked)
        accepted += 1
    if errors:
        return problem(400, f"{len(errors)} of {len(items)} event(s) refused; the other "
                            f"{accepted} were recorded", errors=errors, accepted=accepted)
    return web.json_response({"accepted": accepted}, status=202)


async def list_experiments(request: web.Request) -> web.Response:
    experiments = _experiments(request)
    listed = []
    for name in experiments.experiments:
        found = await _report(experiments, name)
        listed.append({key: found[key] for key in ("name", "flag", "lifecycle", "status",
                                                   "units")})
    return web.json_response({"experiments": listed})


async def _report(experiments: Experiments, name: str) -> dict[str, Any]:
    try:
        return await experiments.report(name)
    except RedisUnavailable as exc:
        raise Refused(problem(503, f"the experiment's tallies are in Redis, which is "
                                   f"unreachable ({exc})")) from None


async def get_experiment(request: web.Request) -> web.Response:
    experiments, name = _named(request)
    return web.json_response(await _report(experiments, name))


async def report_page(request: web.Request) -> web.Response:
    experiments, name = _named(request)
    return web.Response(text=render_report(await _report(experiments, name)),
                        content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'none'; "
                                 "style-src 'unsafe-inline'; img-src data:"})


async def patch_experiment(request: web.Request) -> web.Response:
    experiments, name = _named(request)
    body = await json_object(request, "the change")
    status = body.get("status")
    allowed = ("running", "paused", "completed")
    if set(body) != {"status"} or status not in allowed:
        return problem(400, f"send {{\"status\": one of {', '.join(allowed)}}}")
    try:
        found = await experiments.set_status(name, ExperimentStatus(status))
    except ValueError as exc:
        return problem(409, str(exc))
    except RedisUnavailable as exc:
        return problem(503, f"the change was not applied: Redis is unreachable ({exc})")
    return web.json_response(found)


def register(app: web.Application) -> None:
    app.router.add_post("/admin/events", post_events)
    app.router.add_get("/admin/experiments", list_experiments)
    app.router.add_get("/admin/experiments/{name}", get_experiment)
    app.router.add_patch("/admin/experiments/{name}", patch_experiment)
    app.router.add_get("/admin/experiments/{name}/report", report_page)


if register not in ADMIN_ROUTES:
    ADMIN_ROUTES.append(register)
