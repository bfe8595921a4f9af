"""redis-py's cluster client internals RedisLink relies on to recover from losing every node.

redis-py's asyncio RedisCluster (5.0 up to at least 6.2) drops a node from its startup
nodes on every connection error or timeout it meets there, then reloads the slot map from
the startup nodes left. During a failover under load, with a short `redis.timeout`, live
nodes time out too and are dropped as well: once none is left, every later call fails
with "Redis Cluster cannot be connected. Please provide at least one reachable node:
None", for good (seen in tests/integration/test_cluster_stores.py, the cache's L2 off after
a master was killed). `reseed` puts back, when none is left, every node the client knew
and the nodes it was configured with, so the next reload finds the cluster again.

Private names, probed at start: `RedisCluster.nodes_manager`, its `startup_nodes` and
`nodes_cache` (dicts of node name -> ClusterNode).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gateway.wire import need


def startup_nodes(client: Any) -> dict[str, Any]:
    """The nodes the client starts from (a copy): what `reseed` restores."""
    return dict(client.nodes_manager.startup_nodes)


def reseed(client: Any, configured: dict[str, Any]) -> bool:
    """When the client has no startup node left, the nodes it knew and `configured`;
    whether it had none."""
    manager = client.nodes_manager
    if manager.startup_nodes:
        return False
    for name, node in (*manager.nodes_cache.items(), *configured.items()):
        manager.startup_nodes.setdefault(name, node)
    return True


@need("redis", "redis.asyncio.RedisCluster.nodes_manager.startup_nodes/nodes_cache (dicts)")
def _nodes_manager() -> None:
    client = aioredis.RedisCluster(host="127.0.0.1", port=1)  # connects only when used
    manager = client.nodes_manager
    if not isinstance(manager.startup_nodes, dict) or not isinstance(manager.nodes_cache, dict):
        raise TypeError("nodes_manager.startup_nodes or nodes_cache is not a dict")
    seeds = startup_nodes(client)
    if not seeds:
        raise TypeError("a cluster client made from one node has no startup node")
    manager.startup_nodes.clear()
    if not reseed(client, seeds) or manager.startup_nodes.keys() != seeds.keys():
        raise TypeError("the startup nodes could not be put back")


__all__ = ["reseed", "startup_nodes"]
