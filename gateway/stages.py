"""The seams of the request pipeline: what each stage is given and what it returns.

The pipeline calls these and nothing else of a stage, so a stage can be replaced (a real
rate limiter for the pass-through one, say) without the pipeline changing. Each has a
pass-through implementation used when a config has nothing for that stage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from aiohttp import web

from gateway.config.model import Route
from gateway.context import RequestContext
from gateway.metrictally import CounterGroup
from gateway.proxy import AddedFields, Exchange, Fetch, Outgoing


class LimitVerdict(NamedTuple):
    """What the rate limiter decided for one request (a tuple: one is made per request, in
    a third of a frozen dataclass's time)."""

    # Answer this instead of forwarding (429, or 503 when Redis is down and failure_mode closed).
    refusal: web.StreamResponse | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    upstream_headers: tuple[tuple[str, str], ...] = ()
    upstream: str | None = None  # `degrade` may send the request to a cheaper upstream
    outcome: str = "allowed"  # for the access log


ADMIT = LimitVerdict()


class RateLimitStage(Protocol):
    async def check(self, route: Route, ctx: RequestContext, request: web.BaseRequest,
                    request_id: str) -> LimitVerdict: ...


class CacheStage(Protocol):
    def serve(self, route: Route, out: Outgoing, fetch: Fetch
              ) -> Exchange | Awaitable[Exchange]: ...


@dataclass(frozen=True, slots=True)
class FlagResult:
    """What the flag stage decided for one request: the fields the upstream gets, and the
    evaluations to count (once the request is done, with its other metrics)."""

    fields: AddedFields
    counted: CounterGroup


class FlagStage(Protocol):
    def decide(self, route: Route, ctx: RequestContext) -> FlagResult | None: ...

    # For a route that builds no context for anything else: the stage reads what it needs
    # from `get`, the header lookup of a trusted peer (a lookup of nothing otherwise), as
    # build_context would.
    def decide_headers(self, route: Route, get: Callable[[str], str | None],
                       client_ip: str) -> FlagResult | None: ...


class NoLimits:
    async def check(self, route: Route, ctx: RequestContext, request: web.BaseRequest,
                    request_id: str) -> LimitVerdict:
        return ADMIT


class NoCache:
    def serve(self, route: Route, out: Outgoing, fetch: Fetch
              ) -> Exchange | Awaitable[Exchange]:
        return fetch(out)


class NoFlags:
    def decide(self, route: Route, ctx: RequestContext) -> FlagResult | None:
        return None

    def decide_headers(self, route: Route, get: Callable[[str], str | None],
                       client_ip: str) -> FlagResult | None:
        return None
