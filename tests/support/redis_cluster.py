"""A real Redis Cluster on loopback ports for the cluster suite: three primaries, each with
one replica (six redis-server processes), made with `redis-cli --cluster create`.

Started once per session by the `redis_cluster` fixture (tests/e2e/conftest.py) and torn
down after; nothing persists (no RDB, no AOF), and each node keeps its cluster config file
in a temporary directory. `cluster-node-timeout` is short so that a failover in a test takes
a second, not fifteen."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from tests.support.stack import free_port, port_is_free

PRIMARIES = 3
NODE_TIMEOUT_MS = 1000


@dataclass
class RedisClusterProcesses:
    workdir: Path
    replicas: int = 1
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What ERRAND_REDIS_URL says: a redis+cluster:// URL with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 20.0) -> RedisClusterProcesses:
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if not server or not cli:
            raise RuntimeError("redis-server and redis-cli are needed for the cluster suite")
        count = PRIMARIES * (1 + self.replicas)
        self.ports = [_cluster_port() for _ in range(count)]
        for port in self.ports:
            node_dir = self.workdir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                        "--dir", str(node_dir),
                        "--save", "",
                        "--appendonly", "no",
                        "--maxmemory-policy", "noeviction",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
        for port in self.ports:
            _wait_ping(port, timeout)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every node says cluster_state:ok and all 16384 slots are served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ok(p) for p in self.ports if self.alive(p)):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ready")

    def alive(self, port: int) -> bool:
        return self.procs[self.ports.index(port)].poll() is None

    @staticmethod
    def _ok(port: int) -> bool:
        node = redis.Redis(port=port, decode_responses=True)
        try:
            info = node.cluster("info")
            return info.get("cluster_state") == "ok" and int(info["cluster_slots_ok"]) == 16384
        except redis.RedisError:
            return False
        finally:
            node.close()

    def primary_ports(self) -> list[int]:
        """The nodes that are primaries now (ROLE asked of each live node)."""
        out = []
        for port in self.ports:
            if not self.alive(port):
                continue
            node = self.node(port)
            try:
                if node.execute_command("ROLE")[0] == "master":
                    out.append(port)
            finally:
                node.close()
        return out

    def primary_port(self, slot: int) -> int:
        """The primary serving `slot`, by CLUSTER SLOTS of a primary."""
        node = self.node(self.primary_ports()[0])
        try:
            for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        finally:
            node.close()
        raise RuntimeError(f"slot {slot} is not served")

    def client(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports],
            decode_responses=True,
        )

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait_ping(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            node = redis.Redis(port=port, socket_connect_timeout=0.2)
            try:
                if node.ping():
                    return
            finally:
                node.close()
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port <= 55535 and port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")
