"""Admission control through the real gateway, in front of a real upstream of fixed capacity
that counts its own concurrency and fails the test if it ever exceeds the limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.admission import Gate
from tests.harness import (
    GatewayProcessHandle,
    InProcessGateway,
    base_config,
    client_session,
    free_port,
)

OVERLOADED = "tag:sidecar-gateway,2026:overloaded"


class Service:
    """An upstream that serves at most `capacity` requests at once (more is a test failure,
    counted in `over`), each taking `delay` seconds, or until `gate` opens for /block.

    `shared=True` models a service that queues internally instead: each request takes
    delay * max(1, in flight / capacity), the way a CPU-bound service shares itself."""

    def __init__(self, capacity: int, delay: float = 0.05, shared: bool = False) -> None:
        self.capacity, self.delay, self.shared = capacity, delay, shared
        self.now = self.peak = self.over = 0
        self.order: list[str] = []
        self.gate = asyncio.Event()
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.now += 1
        self.peak = max(self.peak, self.now)
        if self.now > self.capacity and not self.shared:
            self.over += 1
        self.order.append(request.path_qs)
        try:
            if request.path == "/block":
                await self.gate.wait()
            else:
                factor = max(1.0, self.now / self.capacity) if self.shared else 1.0
                await asyncio.sleep(self.delay * factor)
            return web.Response(text="ok", headers={"Cache-Control": "max-age=60"}
                                if request.path.startswith("/cached") else None)
        finally:
            self.now -= 1

    async def start(self) -> Service:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, backlog=1024).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def service_factory() -> AsyncIterator[Callable[..., Any]]:
    started: list[Service] = []

    async def make(capacity: int, delay: float = 0.05, shared: bool = False) -> Service:
        service = await Service(capacity, delay, shared).start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.gate.set()
        await service.stop()


def admission_config(service: Service, admission: dict[str, Any], **extra: Any
                     ) -> dict[str, Any]:
    config = base_config(service.url)
    config["upstreams"]["api"]["admission"] = admission
    config["context"]["priority_by_tier"] = {"enterprise": 1, "free": -1}
    config["context"]["subscription_tier"] = {"header": "X-Subscription-Tier",
                                              "default": "pro"}
    config["routes"] = [
        {"name": "critical", "match": {"path_prefix": "/critical"}, "upstream": "api",
         "priority": "critical"},
        {"name": "bulk", "match": {"path_prefix": "/bulk"}, "upstream": "api",
         "priority": "bulk"},
        {"name": "cached", "match": {"path_prefix": "/cached"}, "upstream": "api",
         "cache": {"ttl": "60s"}},
        {"name": "default", "match": {"path_prefix": "/"}, "upstream": "api"},
    ]
    config.update(extra)
    return config


def gate_of(gateway: InProcessGateway) -> Gate:
    assert gateway.process.services is not None
    return gateway.process.services.gates.by_upstream["api"]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def fetch(session: aiohttp.ClientSession, url: str, **kwargs: Any
                ) -> tuple[int, CIMultiDict[str], bytes]:
    async with session.get(url, **kwargs) as response:
        return response.status, response.headers.copy(), await response.read()


def sample(exposition: str, series: str) -> float:
    """One series' value in a Prometheus text exposition (0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


SHED_BULK_FULL = 'gateway_admission_shed_total{priority="bulk",reason="queue_full",upstream="api"}'
WAITED_CRITICAL = 'gateway_admission_wait_seconds_count{priority="critical",upstream="api"}'
SHED_WAITS_BULK = 'gateway_admission_shed_wait_seconds_count{priority="bulk",upstream="api"}'
SHED_WAITED_BULK = 'gateway_admission_shed_wait_seconds_sum{priority="bulk",upstream="api"}'


async def test_the_upstream_never_sees_more_than_the_instance_limit_across_two_workers(
        process_factory: Callable[..., GatewayProcessHandle],
        service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=4, delay=0.05)
    config = admission_config(service, {"max_concurrency": 4, "max_wait": {"normal": "10s"},
                                        "target_delay": "10s"})  # no CoDel: all are served
    gw = process_factory(config, workers=2)
    async with client_session() as s:
        # Each on its own connection, so both workers get a part.
        answers = await asyncio.gather(*(fetch(s, f"{gw.url}/n{i}", headers={
            "Connection": "close"}) for i in range(60)))
        assert [a[0] for a in answers] == [200] * 60, [a[2] for a in answers if a[0] != 200]
        assert service.over == 0 and service.peak <= 4
        async with s.get(f"{gw.admin_url}/admin/admission") as r:
            report = await r.json()
        async with s.get(f"{gw.admin_url}/metrics") as r:
            exposition = await r.text()
    api = report["upstreams"]["api"]
    assert report["workers"] == 2 and api["limit"] == 4 and api["in_flight"] == 0
    assert [w["limit"] for w in api["per_worker"]] == [2, 2]
    assert 'gateway_admission_limit{upstream="api"} 4.0' in exposition


async def test_workers_lend_each_other_permits_and_the_instance_limit_still_holds(
        process_factory: Callable[..., GatewayProcessHandle],
        service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=4)
    config = admission_config(service, {"max_concurrency": 4, "max_wait": {"normal": "30s"},
                                        "target_delay": "30s"})
    gw = process_factory(config, workers=2)
    async with client_session() as s:
        # Four held requests on four connections: however the kernel spreads them over
        # the two workers (2 each, the static shares, only three times in eight), all
        # four reach the upstream, the busier worker borrowing the other's spare permits.
        held = [asyncio.ensure_future(fetch(s, f"{gw.url}/block", headers={
            "Connection": "close"})) for _ in range(4)]
        await until(lambda: service.now == 4, timeout=20.0)
        async with s.get(f"{gw.admin_url}/admin/admission") as r:
            report = (await r.json())["upstreams"]["api"]
        # A fifth waits: the quotas sum to the limit, never past it.
        fifth = asyncio.ensure_future(fetch(s, f"{gw.url}/n5", headers={"Connection": "close"}))
        await asyncio.sleep(0.3)
        assert service.now == 4 and not fifth.done()
        service.gate.set()
        answers = await asyncio.gather(*held, fifth)
    assert [a[0] for a in answers] == [200] * 5
    assert service.over == 0 and service.peak == 4
    assert sum(w["in_flight"] for w in report["per_worker"]) == 4
    assert sum(w["quota"] for w in report["per_worker"]) <= 4
    assert [w["limit"] for w in report["per_worker"]] == [2, 2]


async def test_higher_classes_reach_the_upstream_first_and_tiers_move_requests(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1)
    gw = await gateway_factory(admission_config(service, {
        "max_concurrency": 1, "target_delay": "10s",
        "max_wait": {p: "10s" for p in ("critical", "high", "normal", "low", "bulk")}}))
    gate = gate_of(gw)
    async with client_session() as s:
        blocker = asyncio.ensure_future(fetch(s, f"{gw.url}/block"))
        await until(lambda: service.now == 1)
        waiting = []
        for path, tier in (("/bulk/1", "pro"), ("/n/free", "free"), ("/n/pro", "pro"),
                           ("/bulk/2", "pro"), ("/n/enterprise", "enterprise"),
                           ("/critical/1", "pro")):
            waiting.append(asyncio.ensure_future(fetch(
                s, f"{gw.url}{path}", headers={"X-Subscription-Tier": tier})))
            queued = len(waiting)
            await until(lambda n=queued: gate.control.waiting == n)
        assert gate.control.depths() == (1, 1, 1, 1, 2)
        service.gate.set()
        answers = await asyncio.gather(blocker, *waiting)
    assert all(a[0] == 200 for a in answers)
    assert service.order == ["/block", "/critical/1", "/n/enterprise", "/n/pro", "/n/free",
                             "/bulk/1", "/bulk/2"]
    assert service.over == 0


async def test_a_full_queue_sheds_at_once_with_503_retry_after_and_an_overloaded_problem(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1)
    gw = await gateway_factory(admission_config(service, {
        "max_concurrency": 1, "queue_size": 1, "max_wait": {"bulk": "10s"},
        "target_delay": "10s"}))
    gate = gate_of(gw)
    async with client_session() as s:
        async with s.get(f"{gw.admin_url}/metrics") as r:
            before = await r.text()  # the registry is the test process's: count from here
        blocker = asyncio.ensure_future(fetch(s, f"{gw.url}/block"))
        await until(lambda: service.now == 1)
        queued_bulk = asyncio.ensure_future(fetch(s, f"{gw.url}/bulk/queued"))
        await until(lambda: gate.control.waiting == 1)
        status, headers, body = await fetch(s, f"{gw.url}/bulk/refused")
        assert status == 503 and headers["Retry-After"] == "1"
        assert headers["Content-Type"] == "application/problem+json"
        problem = orjson.loads(body)
        assert (problem["type"], problem["title"], problem["reason"], problem["priority"]) == \
            (OVERLOADED, "Overloaded", "queue_full", "bulk")
        assert problem["request_id"] == headers["X-Request-Id"]
        # A critical arrival displaces the queued bulk request, which is answered at once.
        critical = asyncio.ensure_future(fetch(s, f"{gw.url}/critical/x"))
        status, _, body = await asyncio.wait_for(queued_bulk, 5)
        assert status == 503 and orjson.loads(body)["reason"] == "queue_full"
        service.gate.set()
        assert (await blocker)[0] == 200 and (await critical)[0] == 200
        async with s.get(f"{gw.admin_url}/metrics") as r:
            exposition = await r.text()
    assert service.order == ["/block", "/critical/x"]
    assert sample(exposition, SHED_BULK_FULL) - sample(before, SHED_BULK_FULL) == 2
    assert sample(exposition, WAITED_CRITICAL) - sample(before, WAITED_CRITICAL) == 1
    # How long the shed requests waited in the queue: the refused one 0 (at arrival), the
    # displaced one as long as it stood there.
    assert sample(exposition, SHED_WAITS_BULK) - sample(before, SHED_WAITS_BULK) == 2
    assert sample(exposition, SHED_WAITED_BULK) > sample(before, SHED_WAITED_BULK)


async def test_a_request_still_queued_at_its_max_wait_is_shed_then(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1)
    gw = await gateway_factory(admission_config(service, {
        "max_concurrency": 1, "max_wait": {"bulk": "100ms"}}))
    async with client_session() as s:
        blocker = asyncio.ensure_future(fetch(s, f"{gw.url}/block"))
        await until(lambda: service.now == 1)
        status, headers, body = await asyncio.wait_for(fetch(s, f"{gw.url}/bulk/late"), 5)
        assert status == 503 and "Retry-After" in headers
        assert orjson.loads(body)["reason"] == "max_wait"
        service.gate.set()
        await blocker
    assert service.order == ["/block"]


async def test_codel_sheds_the_standing_queue_and_the_survivors_are_served(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1, delay=0.03)
    gw = await gateway_factory(admission_config(service, {
        "max_concurrency": 1, "target_delay": "20ms", "interval": "250ms",
        "max_wait": {"normal": "10s", "bulk": "10s"}}))
    async with client_session() as s:
        # 20 x 30 ms of bulk work: the queue stands long past target + interval.
        answers = await asyncio.gather(*(fetch(s, f"{gw.url}/bulk/{i}") for i in range(20)),
                                       *(fetch(s, f"{gw.url}/n/{i}") for i in range(2)))
    bulk, normal = answers[:20], answers[20:]
    reasons = [orjson.loads(a[2])["reason"] for a in bulk if a[0] == 503]
    # Without CoDel all twenty would wait their turn (10 s allows it); with it, the bulk
    # waiters standing past the target are shed and the higher class is served.
    assert reasons and set(reasons) == {"codel"}
    assert [a[0] for a in normal] == [200] * 2
    assert service.over == 0


async def test_a_client_that_goes_away_leaves_the_queue_at_once(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1)
    gw = await gateway_factory(admission_config(service, {
        "max_concurrency": 1, "max_wait": {"normal": "10s"}, "target_delay": "10s"}))
    gate = gate_of(gw)
    async with client_session() as s:
        blocker = asyncio.ensure_future(fetch(s, f"{gw.url}/block"))
        await until(lambda: service.now == 1)
        leaving = asyncio.ensure_future(fetch(s, f"{gw.url}/n/gone"))
        await until(lambda: gate.control.waiting == 1)
        leaving.cancel()  # closes its connection: aiohttp cancels the gateway's handler
        await until(lambda: gate.control.waiting == 0)
        service.gate.set()
        assert (await blocker)[0] == 200
        assert (await fetch(s, f"{gw.url}/n/after"))[0] == 200
    assert service.order == ["/block", "/n/after"]
    assert gate.control.inflight == 0


async def test_drain_answers_every_queued_request_served_or_503(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1, delay=0.1)
    config = admission_config(service, {"max_concurrency": 1, "target_delay": "10s",
                                        "max_wait": {"critical": "10s", "normal": "10s"}})
    config["drain_timeout"] = "1s"  # queued requests may wait half of it
    gw = await gateway_factory(config)
    gate = gate_of(gw)
    async with client_session() as s:
        blocker = asyncio.ensure_future(fetch(s, f"{gw.url}/block"))
        await until(lambda: service.now == 1)
        queued = []
        for i in range(12):  # 100 ms each: more than the 500 ms they may still wait
            queued.append(asyncio.ensure_future(fetch(s, f"{gw.url}/critical/{i}")))
            await until(lambda n=i + 1: gate.control.waiting == n)
        draining = asyncio.ensure_future(gw.process.drain_and_stop())
        await asyncio.sleep(0.05)
        service.gate.set()
        await draining
        answers = await asyncio.gather(blocker, *queued)
    statuses = [a[0] for a in answers]
    served, shed = statuses.count(200), statuses.count(503)
    assert served + shed == 13 and served >= 2 and shed >= 1
    assert {orjson.loads(a[2])["reason"] for a in answers if a[0] == 503} == {"drain"}
    assert service.over == 0


async def test_a_cache_hit_never_waits_for_admission(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1)
    gw = await gateway_factory(admission_config(service, {"max_concurrency": 1}))
    gate = gate_of(gw)
    async with client_session() as s:
        assert (await fetch(s, f"{gw.url}/cached/page"))[0] == 200  # stored
        blocker = asyncio.ensure_future(fetch(s, f"{gw.url}/block"))
        await until(lambda: service.now == 1)
        status, headers, _ = await asyncio.wait_for(fetch(s, f"{gw.url}/cached/page"), 2)
        assert (status, headers["X-Cache"]) == (200, "HIT")
        assert gate.control.waiting == 0 and gate.control.inflight == 1
        service.gate.set()
        await blocker


async def test_a_rate_limit_refusal_never_waits_for_admission(
        gateway_factory: Callable[..., Any], service_factory: Callable[..., Any]) -> None:
    service = await service_factory(capacity=1)
    config = admission_config(service, {"max_concurrency": 1, "target_delay": "10s",
                                        "max_wait": {"normal": "10s"}})
    config["rate_limits"] = {"one": {"algorithm": "sliding_window", "scope": "global",
                                     "limit": 1, "window": "60s"}}
    config["routes"].insert(0, {"name": "limited", "match": {"path_prefix": "/limited"},
                                "upstream": "api", "rate_limits": ["one"]})
    gw = await gateway_factory(config)
    gate = gate_of(gw)
    async with client_session() as s:
        blocker = asyncio.ensure_future(fetch(s, f"{gw.url}/block"))
        await until(lambda: service.now == 1)
        admitted = asyncio.ensure_future(fetch(s, f"{gw.url}/limited/a"))
        await until(lambda: gate.control.waiting == 1)  # allowed by the rule: it queues
        status, headers, _ = await asyncio.wait_for(fetch(s, f"{gw.url}/limited/b"), 2)
        assert status == 429 and "Retry-After" in headers
        assert gate.control.waiting == 1
        service.gate.set()
        assert (await blocker)[0] == 200 and (await admitted)[0] == 200
    assert service.order == ["/block", "/limited/a"]


async def test_the_adaptive_limit_follows_an_upstream_that_becomes_slower(
        process_factory: Callable[..., GatewayProcessHandle],
        service_factory: Callable[..., Any]) -> None:
    # The gateway in a process of its own: in this test's loop, the clients' and the
    # upstream's work would be the larger part of the latency it measures.
    service = await service_factory(capacity=10, delay=0.02, shared=True)
    gw = process_factory(admission_config(service, {
        "max_concurrency": "adaptive", "min": 2, "max": 100,
        "max_wait": {"normal": "10s"}, "target_delay": "10s"}))
    stop = asyncio.Event()

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            await fetch(s, f"{gw.url}/n")

    async def limit(s: aiohttp.ClientSession) -> int:
        async with s.get(f"{gw.admin_url}/admin/admission") as r:
            return int((await r.json())["upstreams"]["api"]["limit"])

    async def until(s: aiohttp.ClientSession, reached: Callable[[int], bool]) -> int:
        # Polled against a generous deadline: on a loaded machine the limit takes longer
        # to move, and how long is not what this test is about.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            value = await limit(s)
            if reached(value) or asyncio.get_running_loop().time() > deadline:
                return value
            await asyncio.sleep(0.1)

    async with client_session() as s:
        clients = [asyncio.ensure_future(client(s)) for _ in range(30)]
        before = await until(s, lambda value: value >= 8)
        service.capacity = 1  # a tenth as much at once: latency at `before` x10
        after = await until(s, lambda value: value <= before / 3)
        stop.set()
        await asyncio.gather(*clients)
    assert before >= 8  # grew from 2 to about the capacity
    assert after <= before / 3  # what it serves at once at its floor, plus headroom
