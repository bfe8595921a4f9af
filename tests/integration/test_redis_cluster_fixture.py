"""The local Redis Cluster the scale-out tests run on is a real one: slots spread over three
masters, each with a replica that takes over when its master dies."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from redis.cluster import RedisCluster as SyncClusterClient

from tests.rediscluster import RedisCluster


def test_three_masters_share_the_slots_and_each_has_a_replica(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters
    assert len(masters) == 3
    assert len(redis_cluster.replicas) == 3
    owners = {redis_cluster.node_for_key(f"user:{n}").port for n in range(100)}
    assert owners == {node.port for node in masters}


def test_a_cluster_client_writes_across_slots(redis_cluster: RedisCluster) -> None:
    client = SyncClusterClient.from_url(redis_cluster.url, decode_responses=True)
    try:
        for n in range(30):
            client.set(f"k{n}", n)
        assert [int(client.get(f"k{n}")) for n in range(30)] == list(range(30))
    finally:
        client.close()
    first = redis_cluster.masters[0]
    elsewhere = next(f"k{n}" for n in range(30)
                     if redis_cluster.node_for_key(f"k{n}").port != first.port)
    # a plain client raises MovedError (recent redis-py) or its base, a ResponseError whose
    # message still starts with MOVED (redis-py 5.0)
    with first.client() as node, pytest.raises(redis.exceptions.ResponseError,
                                               match=r"^(MOVED )?\d+ 127\.0\.0\.1:\d+$"):
        node.get(elsewhere)


def test_a_killed_master_is_replaced_by_its_replica(
        redis_cluster_factory: Callable[[], RedisCluster]) -> None:
    cluster = redis_cluster_factory()
    victim = cluster.node_for_key("user:1")
    victim.kill()
    cluster.wait_ok(timeout=30)
    successor = cluster.node_for_key("user:1")
    assert successor.port != victim.port
    assert successor.alive
    assert len(cluster.masters) == 3
    started = time.monotonic()
    with successor.client() as node:
        node.set("user:1", "still here")
        assert node.get("user:1") == "still here"
    assert time.monotonic() - started < 5
