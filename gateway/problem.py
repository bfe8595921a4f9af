"""Errors the gateway answers itself, as RFC 9457 problem details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def problem_body(status: int, detail: str, request_id: str | None = None,
                 type_: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "type": type_ or f"https://httpstatuses.io/{status}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return orjson.dumps(body)


def problem(status: int, detail: str, request_id: str | None = None, *,
            headers: Mapping[str, str] | None = None, type_: str | None = None,
            **extra: Any) -> web.Response:
    response = web.Response(
        status=status,
        body=problem_body(status, detail, request_id, type_, **extra),
        content_type="application/problem+json",
        headers=headers,
    )
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response
