from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    GatewayProcessHandle,
    InProcessGateway,
    RedisServer,
    Upstream,
    base_config,
    write_config,
)
from tests.rediscluster import RedisBackend, RedisCluster, cluster_backend, single_backend


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port; tests may stop, kill or restart it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_factory() -> Iterator[Callable[[], RedisServer]]:
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer().start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def _shared_redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster(_shared_redis_cluster: RedisCluster) -> RedisCluster:
    """A real 3-master, 3-replica Redis Cluster shared by the session, emptied for each test.
    A test that kills, pauses or reshards nodes takes its own from `redis_cluster_factory`."""
    _shared_redis_cluster.flushall()
    return _shared_redis_cluster


@pytest.fixture(params=["redis", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> RedisBackend:
    """The store suites' Redis: a private redis-server, then the shared cluster (emptied)."""
    if request.param == "redis":
        return single_backend(request.getfixturevalue("redis_server"))
    return cluster_backend(request.getfixturevalue("redis_cluster"))


@pytest.fixture
def redis_cluster_factory() -> Iterator[Callable[[], RedisCluster]]:
    clusters: list[RedisCluster] = []

    def make() -> RedisCluster:
        cluster = RedisCluster().start()
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process gateways from a config dict: `await gateway_factory(config)`."""
    started: list[InProcessGateway] = []

    async def make(config: dict[str, Any] | str, name: str = "gateway.yaml"
                   ) -> InProcessGateway:
        path = write_config(tmp_path, config, name)
        gateway = await InProcessGateway(path).start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in reversed(started):
        await gateway.stop()


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Any], upstream: Upstream) -> InProcessGateway:
    """The base config in front of the scriptable upstream."""
    gw: InProcessGateway = await gateway_factory(base_config(upstream.url))
    return gw


@pytest.fixture
def process_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcessHandle]]:
    """Start gateways as child processes (`python -m gateway run`)."""
    started: list[GatewayProcessHandle] = []

    def make(config: dict[str, Any] | str, workers: int | None = None,
             env: dict[str, str] | None = None, name: str = "gateway.yaml",
             wait_ready: bool = True) -> GatewayProcessHandle:
        path = write_config(tmp_path, config, name)
        handle = GatewayProcessHandle(path, workers, env).start(wait_ready=wait_ready)
        started.append(handle)
        return handle

    yield make
    for handle in reversed(started):
        handle.stop()
