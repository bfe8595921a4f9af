"""Admin endpoints for rate-limit state (CONTRACT "Admin listener").

GET    /admin/ratelimits/{rule}?key=VALUE[&tier=T]   what the rule has left for that key
DELETE /admin/ratelimits/{rule}?key=VALUE            forget the key's state (a reset)

`key` is the scope value as the request carries it: a user id, tenant id, client IP, the
raw API key (hashed here, as the limiter does), or an attribute's value; a `global` rule
needs none. `ip=ADDRESS` instead names the counter a `when_absent: ip` rule keeps for
requests from that address that lack the rule's own value. Without Redis each worker keeps
its own counters: a GET shows one worker's, a DELETE resets every worker's (the supervisor
sends changes to all of them).
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin import ADMIN_ROUTES, PROCESS, Refused
from gateway.config.model import RateLimitRule, WhenAbsent
from gateway.config.reader import nearest
from gateway.problem import problem
from gateway.ratelimit.stage import RateLimiter
from gateway.redisconn import RedisUnavailable


def _target(request: web.Request) -> tuple[RateLimiter, str, str, bool]:
    runtime = request.app[PROCESS].pipeline.runtime
    name = request.match_info["rule"]
    rules = runtime.config.rate_limits
    if name not in rules:
        hint = nearest(name, rules)
        raise Refused(problem(404, f"no rate-limit rule {name!r}"
                              + (f" (did you mean {hint!r}?)" if hint else "")))
    limiter = runtime.limiter
    if not isinstance(limiter, RateLimiter):
        raise Refused(problem(404, "no route applies rate limits, so no rule keeps state"))
    if "ip" in request.query:
        return limiter, name, _by_ip(request, rules[name]), True
    key = request.query.get("key", "")
    if not key and rules[name].scope.kind != "global":
        raise Refused(problem(400, f"rule {name!r} counts per {rules[name].scope}: say whose "
                              "state with ?key=..."))
    return limiter, name, key, False


def _by_ip(request: web.Request, rule: RateLimitRule) -> str:
    """`?ip=ADDRESS`: the address of a `when_absent: ip` counter."""
    if rule.when_absent is not WhenAbsent.IP:
        raise Refused(problem(400, f"rule {rule.name!r} has no per-address counters (?ip= "
                              "applies to rules with when_absent: ip)"))
    if "key" in request.query:
        raise Refused(problem(400, "give either ?key= (the rule's own value) or ?ip= (its "
                              "when_absent: ip counter), not both"))
    address = request.query["ip"]
    if not address:
        raise Refused(problem(400, "?ip= needs the client address"))
    return address


async def show_state(request: web.Request) -> web.Response:
    limiter, name, key, by_ip = _target(request)
    try:
        state = await limiter.state(name, key, request.query.get("tier") or None, by_ip)
    except RedisUnavailable as exc:
        return problem(503, f"Redis is unavailable: {exc}")
    return web.json_response(state)


async def reset_state(request: web.Request) -> web.Response:
    limiter, name, key, by_ip = _target(request)
    try:
        await limiter.reset(name, key, by_ip)
    except RedisUnavailable as exc:
        return problem(503, f"Redis is unavailable, nothing was reset: {exc}")
    return web.json_response({"rule": name, "key": key, "by_ip": by_ip, "reset": True})


def register(app: web.Application) -> None:
    app.router.add_get("/admin/ratelimits/{rule}", show_state)
    app.router.add_delete("/admin/ratelimits/{rule}", reset_state)


if register not in ADMIN_ROUTES:
    ADMIN_ROUTES.append(register)
