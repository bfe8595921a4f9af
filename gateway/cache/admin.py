"""POST /admin/cache/purge (CONTRACT "Admin listener"; issues 4 and 6).

Body: {"url": "https://host/path?query"}, {"tag": "product-42"} or {"all": true}: exactly
one. Every worker and every instance forgets it: with Redis through the L2 keys and the
purge channel; without Redis the supervisor sends the call to every worker. A purge that
could not reach Redis still cleans this process and answers 503, saying so.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from gateway.admin import ADMIN_ROUTES, PROCESS, Refused, json_object
from gateway.problem import problem
from gateway.redisconn import RedisUnavailable

_FIELDS = ("url", "tag", "all")


def _one_target(body: dict[str, object]) -> tuple[str, object]:
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise Refused(problem(400, f"unknown field(s) {', '.join(map(repr, unknown))}: give "
                              'one of {"url": ...}, {"tag": ...} or {"all": true}'))
    given = [(name, body[name]) for name in _FIELDS if name in body]
    if len(given) != 1:
        raise Refused(problem(400, 'give exactly one of {"url": ...}, {"tag": ...} or '
                              '{"all": true}'))
    name, value = given[0]
    if name == "all" and value is not True:
        raise Refused(problem(400, '"all" must be true'))
    if name == "tag" and (not isinstance(value, str) or not value.strip()):
        raise Refused(problem(400, '"tag" must be a non-empty string'))
    if name == "url":
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise Refused(problem(400, '"url" must be an absolute http(s) URL as clients ask '
                                  "for it, e.g. http://api.example/api/v1/market/prices"))
    return name, value


async def purge(request: web.Request) -> web.Response:
    name, value = _one_target(await json_object(request, "a purge"))
    services = request.app[PROCESS].services
    if services is None or services.cache is None:
        return problem(503, "the gateway is still starting")
    cache = services.cache
    try:
        if name == "url":
            count = await cache.purge_url(str(value), strict=True)
        elif name == "tag":
            count = await cache.purge_tag(str(value), strict=True)
        else:
            count = await cache.purge_all(strict=True)
    except RedisUnavailable as exc:
        return problem(503, f"purged in this process, but Redis is unavailable ({exc}): other "
                       "instances were not told and keep their copies until they expire")
    return web.json_response({"purged": {name: value}, "entries_here": count})


def register(app: web.Application) -> None:
    app.router.add_post("/admin/cache/purge", purge)


if register not in ADMIN_ROUTES:
    ADMIN_ROUTES.append(register)
