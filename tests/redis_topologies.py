"""A real Redis Sentinel deployment and a real Redis Cluster on loopback, for tests.

    with running_sentinel(tmp) as s:      # s.url: redis+sentinel://127.0.0.1:P/vfile/0
        s.kill_master(); s.wait_failover()
    with running_cluster(tmp, start=False) as c:    # c.url: redis+cluster://127.0.0.1:P
        c.start(); c.kill(c.ports[1])

Debian's redis-server runs every part: a master and a replica, a sentinel
(`redis-server CONF --sentinel`, one sentinel with quorum 1, so a failover
takes a few seconds), and three cluster masters (`--cluster-enabled yes`,
joined with `redis-cli --cluster create`). Each server runs in its own
process group on a free port, keeps nothing on disk but the config files the
sentinel and the cluster rewrite in the test's directory, and is always
stopped.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from fleet_servers import REDIS_SERVER
from mounting import stop_process
from redis.crc import key_slot
from servers import free_port, wait_ready

SERVICE = "vfile"
DEADLINE = 60.0


def _server(tmp: Path, port: int, *args: str, conf: Path | None = None
            ) -> subprocess.Popen[bytes]:
    work = tmp / str(port)
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [REDIS_SERVER, *([str(conf)] if conf else []), "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work),
         "--logfile", str(work / "log"),
         "--daemonize", "no", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)
    wait_ready(proc, [(("127.0.0.1", port), b"PING\r\n", b"+PONG")], [work / "log"],
                f"redis-server :{port}")
    return proc


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a free port too."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def _wait(what: str, check: object) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Sentinel:
    tmp: Path
    sentinel_port: int
    ports: list[int]  # [master, replica] as started
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def master_port(self) -> int:
        _host, port = client(self.sentinel_port).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def kill_master(self) -> int:
        port = self.master_port()
        stop_process(self.procs.pop(port))
        return port

    def wait_failover(self, old: int) -> int:
        _wait("the sentinel to promote the replica", lambda: self.master_port() != old
              and client(self.master_port()).info("replication")["role"] == "master")
        return self.master_port()


@contextlib.contextmanager
def running_sentinel(tmp: Path) -> Iterator[Sentinel]:
    """A master, a replica of it and one sentinel watching them (quorum 1)."""
    tmp.mkdir(parents=True, exist_ok=True)
    master, replica, sport = free_port(), free_port(), free_port()
    s = Sentinel(tmp, sport, [master, replica])
    try:
        s.procs[master] = _server(tmp, master)
        s.procs[replica] = _server(tmp, replica, "--replicaof", "127.0.0.1", str(master))
        _wait("the replica to sync", lambda: client(replica).info("replication")
              ["master_link_status"] == "up")
        conf = tmp / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        conf.write_text(f"sentinel monitor {SERVICE} 127.0.0.1 {master} 1\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 5000\n")
        s.procs[sport] = _server(tmp, sport, "--sentinel", conf=conf)
        _wait("the sentinel to know the replica", lambda: client(sport).execute_command(
            "SENTINEL", "REPLICAS", SERVICE))
        yield s
    finally:
        for proc in s.procs.values():
            stop_process(proc)


@dataclass
class Cluster:
    tmp: Path
    ports: list[int]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: (first slot, last slot, port of its master)
    slots: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        """Start three masters and join them into one cluster (all slots covered)."""
        for port in self.ports:
            self.procs[port] = _server(self.tmp, port, "--cluster-enabled", "yes",
                                       "--cluster-config-file", "nodes.conf",
                                       "--cluster-node-timeout", "2000",
                                       # a cache: the live shards serve when one is down
                                       "--cluster-require-full-coverage", "no")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        _wait("the cluster to be ok", lambda: all(
            client(p).cluster("info")["cluster_state"] == "ok" for p in self.ports))
        self.slots = [(int(start), int(end), int(nodes[0][1])) for start, end, *nodes
                      in client(self.ports[0]).execute_command("CLUSTER", "SLOTS")]

    def kill(self, port: int) -> None:
        stop_process(self.procs.pop(port))

    def node_of(self, key: str) -> int:
        """The port of the master that held `key`'s slot when the cluster was made."""
        slot = key_slot(key.encode())
        for start, end, port in self.slots:
            if start <= slot <= end:
                return port
        raise AssertionError(f"no node owns slot {slot}")


@contextlib.contextmanager
def running_cluster(tmp: Path, *, start: bool = True) -> Iterator[Cluster]:
    """Three cluster masters on free ports (`start=False`: chosen, not started yet)."""
    tmp.mkdir(parents=True, exist_ok=True)
    c = Cluster(tmp, [_cluster_port() for _ in range(3)])
    try:
        if start:
            c.start()
        yield c
    finally:
        for proc in c.procs.values():
            stop_process(proc)
