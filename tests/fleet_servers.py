"""A real redis-server and the caching appliance (`vfile appliance cache`) for tests and bench.

    with running_redis(tmp) as redis:                 # redis.url, redis.kill(), redis.client()
        with running_cache(tmp, [upstream_url], redis.url) as cache:   # cache.url, cache.stats()
            ...

Both run as subprocesses in their own process group on loopback / a short
unix socket path, are waited for (failing loudly with their log) and always
stopped. The redis-server keeps nothing on disk (no RDB, no AOF).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from mounting import stop_process, vfile_cmd
from servers import Daemon, ask, free_port, wait_ready

REDIS_SERVER = "/usr/bin/redis-server"


@dataclass
class Redis(Daemon):
    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)


def _start_redis(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server on `port`, waited for."""
    if not os.path.exists(REDIS_SERVER):
        raise RuntimeError(f"{REDIS_SERVER} is missing: install the redis-server package "
                           "(scripts/setup.sh does)")
    log = tmp / f"redis-{port}.log"
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp), "--logfile", str(log),
         "--daemonize", "no", "--protected-mode", "yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)
    wait_ready(proc, [(("127.0.0.1", port), b"PING\r\n", b"+PONG")], [log], "redis-server")
    return proc


@contextlib.contextmanager
def running_redis(tmp: Path, port: int | None = None) -> Iterator[Redis]:
    """Run a real redis-server on 127.0.0.1 (a free port unless given)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = Redis(_start_redis(tmp, port), port, tmp / f"redis-{port}.log")
    try:
        yield server
    finally:
        server.stop()


def restart_redis(server: Redis, tmp: Path) -> None:
    """Start a fresh (empty) redis-server on the same port after `kill()`."""
    server.stop()
    server.proc = _start_redis(tmp, server.port)


@dataclass
class Cache:
    proc: subprocess.Popen[bytes]
    sock: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"clamd://{self.sock}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(ask(self.sock, b"zSTATS\0", b"\0", 5.0).rstrip(b"\0"))
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_cache(upstreams: list[str], redis_url: str, *args: str,
                  listen_tcp: str | None = None) -> Iterator[Cache]:
    """Run `vfile appliance cache` on a unix socket (and `listen_tcp` if given)."""
    sockdir = Path(tempfile.mkdtemp(prefix="vfc-"))  # short: unix paths are <= 107 bytes
    sock = str(sockdir / "cache.sock")
    log_path = sockdir / "log"
    cmd = ["appliance", "cache", "--listen", f"unix://{sock}", "--redis", redis_url,
           "--probe-interval", "0.2", "-v"]
    if listen_tcp:
        cmd += ["--listen", listen_tcp]
    for url in upstreams:
        cmd += ["--upstream", url]
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(vfile_cmd(*cmd, *args), stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, start_new_session=True)
    try:
        wait_ready(proc, [(sock, b"zPING\0", b"PONG")], [log_path], "caching appliance")
        yield Cache(proc, sock, log_path)
    finally:
        stop_process(proc)
        shutil.rmtree(sockdir, ignore_errors=True)


def instream(cache: Cache, data: bytes) -> bytes:
    """One INSTREAM scan of `data` through the caching appliance's socket: its reply."""
    return ask(cache.sock, b"zINSTREAM\0" + struct.pack(">I", len(data)) + data
               + b"\0\0\0\0", b"\0", timeout=20).rstrip(b"\0")
