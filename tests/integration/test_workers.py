"""Several workers share the port; the supervisor restarts the dead and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import psutil
from aiohttp import web

from tests.harness import GatewayProcessHandle, Upstream, base_config, client_session


def workers_of(gw: GatewayProcessHandle) -> list[psutil.Process]:
    assert gw.proc is not None
    return psutil.Process(gw.proc.pid).children()


def listening_pids(port: int, candidates: list[psutil.Process]) -> set[int]:
    pids = set()
    for proc in candidates:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                pids.add(proc.pid)
    return pids


async def test_two_workers_share_the_port(process_factory: Callable[..., GatewayProcessHandle],
                                          upstream: Upstream) -> None:
    gw = process_factory(base_config(upstream.url), workers=2)
    children = workers_of(gw)
    assert len(children) == 2
    assert listening_pids(gw.config.listen.port, children) == {c.pid for c in children}
    async with client_session() as s:
        for _ in range(20):
            async with s.get(f"{gw.url}/x") as r:
                assert r.status == 200


async def test_crashed_worker_is_restarted(process_factory: Callable[..., GatewayProcessHandle],
                                           upstream: Upstream) -> None:
    gw = process_factory(base_config(upstream.url), workers=2)
    victim = workers_of(gw)[0]
    victim.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = {c.pid for c in workers_of(gw)}
        if len(pids) == 2 and victim.pid not in pids:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the supervisor did not replace the killed worker")
    gw.wait_ready()
    async with client_session() as s:
        for _ in range(10):
            async with s.get(f"{gw.url}/x") as r:
                assert r.status == 200


async def test_sigterm_drains_in_flight_requests(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(text="finished")

    upstream.on("/slow", slow)
    for workers in (1, 2):
        gw = process_factory(base_config(upstream.url), workers=workers,
                             name=f"drain{workers}.yaml")
        async with client_session() as s:
            pending = asyncio.ensure_future(s.get(f"{gw.url}/slow"))
            await asyncio.sleep(0.4)
            gw.signal(signal.SIGTERM)
            response = await asyncio.wait_for(pending, 10)
            assert response.status == 200
            assert await response.text() == "finished"
        assert gw.proc is not None
        assert await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 15) == 0


async def test_readyz_is_503_while_draining(
        process_factory: Callable[..., GatewayProcessHandle], upstream: Upstream) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="finished")

    upstream.on("/slow", slow)
    gw = process_factory(base_config(upstream.url))
    async with client_session() as s:
        pending = asyncio.ensure_future(s.get(f"{gw.url}/slow"))
        await asyncio.sleep(0.3)
        gw.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with s.get(f"{gw.admin_url}/readyz") as r:
            assert r.status == 503
            assert (await r.json())["detail"] == "draining"
        async with s.get(f"{gw.admin_url}/healthz") as r:
            assert r.status == 200
        response = await asyncio.wait_for(pending, 10)
        assert response.status == 200
