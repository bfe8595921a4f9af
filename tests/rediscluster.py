"""A real local Redis Cluster for tests: 3 masters and 3 replicas of redis-server.

Every node listens on a free loopback port with its cluster bus on another free port
(`cluster-port`, Redis 7+), persists nothing, and is torn down by PID. The cluster is made by
`redis-cli --cluster create`, as an operator would, and is only handed out once every node
reports `cluster_state:ok` and agrees on the slot map, so a test never races the gossip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster as SyncClusterClient

from gateway.config.model import RedisSettings
from tests.harness import (
    RedisServer,
    free_port,
    listening_is,
    redis_server_binary,
    start_moving,
    wait_for_port,
)

NODE_TIMEOUT_MS = 1000  # how long a silent master takes to be failed over


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise RuntimeError("redis-cli is not on PATH: install Debian's redis-tools (or redis-server)")
    return found


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    dir: str
    proc: subprocess.Popen[bytes] | None = None
    started: bool = False  # once it has, a restart keeps its ports

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        def move() -> None:
            self.port, self.bus_port = free_port(), free_port()

        start_moving(self._launch, move, not self.started)
        self.started = True

    def _launch(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
             "--cluster-config-file", f"{self.dir}/nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             # a replica may take over however long its link was down: a test kills
             # masters moments after the cluster formed
             "--cluster-replica-validity-factor", "0",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        listening_is(self.proc, self.port)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def info(self, section: str) -> dict[str, object]:
        client = self.client()
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def command(self, *args: str) -> object:
        client = self.client()
        try:
            return client.execute_command(*args)
        finally:
            client.close()


class RedisCluster:
    """Six nodes: `masters` and `replicas` are read from the cluster, so after a failover
    they say who holds the slots now."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        self.dir = tempfile.mkdtemp(prefix="gw-redis-cluster-")
        self.replicas_per_master = replicas_per_master
        count = masters * (1 + replicas_per_master)
        self.nodes = [ClusterNode(free_port(), free_port(), f"{self.dir}/{i}")
                      for i in range(count)]

    @property
    def url(self) -> str:
        """Any node will do: clients discover the others."""
        first = next(node for node in self.nodes if node.alive)
        return f"redis://127.0.0.1:{first.port}/0"

    @property
    def startup_nodes(self) -> list[str]:
        return [node.address for node in self.nodes if node.alive]

    def start(self) -> RedisCluster:
        for node in self.nodes:
            os.makedirs(node.dir)
            node.start()
        subprocess.run(
            [redis_cli_binary(), "--cluster", "create",
             *[node.address for node in self.nodes],
             "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, all slots are served by live masters,
        the nodes agree on one slot map and every replica has synced with its master."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                states = [str(node.command("CLUSTER", "INFO")) for node in self.nodes if node.alive]
                maps = {self._slot_map(node) for node in self.nodes if node.alive}
            except redis.RedisError as error:
                last = str(error)
            else:
                live = {node.port for node in self.nodes if node.alive}
                synced = all(node.info("replication").get("master_link_status") == "up"
                             for node in self.replicas)
                if synced and all("cluster_state:ok" in s for s in states) and len(maps) == 1:
                    owners = next(iter(maps))
                    if (sum(end - start + 1 for start, end, _ in owners) == 16384
                            and all(port in live for _, _, port in owners)):
                        return
                last = f"states ok: {sum('cluster_state:ok' in s for s in states)}/{len(states)}, slot maps: {len(maps)}"
            time.sleep(0.1)
        raise TimeoutError(f"Redis Cluster not ready after {timeout}s: {last}")

    @staticmethod
    def _slot_map(node: ClusterNode) -> tuple[tuple[int, int, int], ...]:
        slots = node.command("CLUSTER", "SLOTS")
        assert isinstance(slots, list)
        return tuple(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots))

    def _roles(self) -> Iterator[tuple[ClusterNode, str]]:
        for node in self.nodes:
            if node.alive:
                role = node.command("ROLE")
                assert isinstance(role, list)
                yield node, "master" if role[0] == "master" else "replica"

    @property
    def masters(self) -> list[ClusterNode]:
        return [node for node, role in self._roles() if role == "master"]

    @property
    def replicas(self) -> list[ClusterNode]:
        return [node for node, role in self._roles() if role == "replica"]

    def node_for_key(self, key: str) -> ClusterNode:
        """The master that serves `key`'s slot now."""
        anyone = next(node for node in self.nodes if node.alive)
        slot = int(anyone.command("CLUSTER", "KEYSLOT", key))  # type: ignore[arg-type]
        for start, end, port in self._slot_map(anyone):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def flushall(self) -> None:
        for node in self.masters:
            node.command("FLUSHALL")
            node.command("SCRIPT", "FLUSH")

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class RedisBackend:
    """Where a store suite's Redis is: one redis-server or the cluster. The suites run on
    both and must behave the same."""

    name: str
    url: str
    cluster: bool
    nodes: list[Callable[[], redis.Redis]]  # a client of each node that holds keys

    def settings(self, **overrides: object) -> RedisSettings:
        return RedisSettings(url=self.url, cluster=self.cluster, **overrides)  # type: ignore[arg-type]

    def config(self, **overrides: object) -> dict[str, object]:
        """The `redis` section of a gateway config."""
        return {"url": self.url, "cluster": self.cluster, **overrides}

    def client(self) -> Any:
        """A client that reaches every key: redis-py's cluster client on a cluster."""
        if self.cluster:
            return SyncClusterClient.from_url(self.url, decode_responses=True)
        return redis.Redis.from_url(self.url, decode_responses=True)

    def keys(self, pattern: str = "*") -> list[str]:
        """Every key matching `pattern`, gathered from every master."""
        found: list[str] = []
        for make in self.nodes:
            with make() as node:
                found.extend(str(key) for key in node.scan_iter(match=pattern, count=1000))
        return sorted(found)


def single_backend(server: RedisServer) -> RedisBackend:
    return RedisBackend("redis", server.url, False,
                        [lambda: redis.Redis(port=server.port, decode_responses=True)])


def cluster_backend(cluster: RedisCluster) -> RedisBackend:
    return RedisBackend("cluster", cluster.url, True,
                        [node.client for node in cluster.masters])
