"""The seams of the request pipeline: what each stage is given and what it returns.

The pipeline calls these and nothing else of a stage, so a stage can be replaced (a real
rate limiter for the pass-through one, say) without the pipeline changing. Each has a
pass-through implementation used when a config has nothing for that stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import Any, NamedTuple, Protocol

from aiohttp import web
from multidict import MultiMapping

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
    def look_ahead(self, route: Route, method: str, client_url: str,
                   asked: Mapping[str, str]) -> asyncio.Future[Any] | None:
        """Start the shared-store read `serve` will need, so it leaves with the rate-limit
        decision; None if there is none to start."""

    def serve(self, route: Route, out: Outgoing, fetch: Fetch,
              ahead: asyncio.Future[Any] | None = None) -> Exchange | Awaitable[Exchange]: ...

    def repeat_hit(self, route: str, client_url: str, asked: Mapping[str, str],
                   sent: Mapping[str, str] | None = None,
                   peer_made: Container[str] = ()) -> Exchange | None:
        """`serve`'s fresh hit for a plain GET of `client_url`, or None; not counted: for a
        repeat of a request it answered so (gateway.hitlane), which counts it with
        `count_hit` once it answers it. `sent`: what the upstream would have got for it,
        for a variant's Vary to be compared with, unless the Vary names a field in
        `peer_made` (lower case; one made from the peer); None: no variant with a Vary
        is answered."""

    def count_hit(self, route: str) -> None:
        """A hit answered outside `serve`, counted as `serve` counts one."""


class FlagResult(NamedTuple):
    """What the flag stage decided for one request: the fields the upstream gets, the
    evaluations it counted (the metric's children, incremented together), which flags
    under an experiment were decided by their split, as (flag key, variant, position of
    its unit in `units`), and, when the deciding code has them at hand, the values the
    route's experiment flags bucketed this request by (empty otherwise). `split` is made
    once per combination of outcomes; `units` belongs to one request. (A tuple: one is
    made per request that an experiment records.)"""

    fields: AddedFields
    counted: CounterGroup
    split: tuple[tuple[str, str, int], ...] = ()
    units: tuple[str | None, ...] = ()


class FlagStage(Protocol):
    """Per route with flags, what decides them for one request: from its context, or (for
    a route that builds none) straight from its header section, peer address and whether
    the peer is a trusted proxy, reading the fields as build_context would. Either is given
    the time; None means the route has no flag now. Deciders count what they decide."""

    by_context: Mapping[str, Callable[[RequestContext, float], FlagResult | None]]
    by_headers: Mapping[str, Callable[[MultiMapping[str], str, bool, float],
                                      FlagResult | None]]

    def bucket_value(self, key: str, ctx: RequestContext) -> str | None:
        """What flag `key` buckets this request by, if it splits (an experiment's unit)."""


class NoLimits:
    async def check(self, route: Route, ctx: RequestContext, request: web.BaseRequest,
                    request_id: str) -> LimitVerdict:
        return ADMIT


class NoCache:
    def look_ahead(self, route: Route, method: str, client_url: str,
                   asked: Mapping[str, str]) -> asyncio.Future[Any] | None:
        return None

    def serve(self, route: Route, out: Outgoing, fetch: Fetch,
              ahead: asyncio.Future[Any] | None = None) -> Exchange | Awaitable[Exchange]:
        return fetch(out)

    def repeat_hit(self, route: str, client_url: str, asked: Mapping[str, str],
                   sent: Mapping[str, str] | None = None,
                   peer_made: Container[str] = ()) -> Exchange | None:
        return None

    def count_hit(self, route: str) -> None:
        raise AssertionError("no cache: repeat_hit answers nothing to count")


class NoFlags:
    def bucket_value(self, key: str, ctx: RequestContext) -> str | None:
        return None

    by_context: Mapping[str, Callable[[RequestContext, float], FlagResult | None]] = {}
    by_headers: Mapping[str, Callable[[MultiMapping[str], str, bool, float],
                                      FlagResult | None]] = {}
