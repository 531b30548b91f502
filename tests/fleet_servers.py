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
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from mounting import stop_process, vfile_cmd
from servers import _stop, _wait_ready, free_port

REDIS_SERVER = "/usr/bin/redis-server"
START_DEADLINE = 30.0


@dataclass
class Redis:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        _stop(self.proc)


def _redis_proc(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    if not os.path.exists(REDIS_SERVER):
        raise RuntimeError(f"{REDIS_SERVER} is missing: install the redis-server package "
                           "(scripts/setup.sh does)")
    log = tmp / f"redis-{port}.log"
    return subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp), "--logfile", str(log),
         "--daemonize", "no", "--protected-mode", "yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)


@contextlib.contextmanager
def running_redis(tmp: Path, port: int | None = None) -> Iterator[Redis]:
    """Run a real redis-server on 127.0.0.1 (a free port unless given)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = _redis_proc(tmp, port)
    server = Redis(proc, port, tmp / f"redis-{port}.log")
    try:
        _wait_ready(proc, [(("127.0.0.1", port), b"PING\r\n", b"+PONG")], [server.log],
                    "redis-server")
        yield server
    finally:
        _stop(server.proc)


def restart_redis(server: Redis, tmp: Path) -> None:
    """Start a fresh (empty) redis-server on the same port after `kill()`."""
    _stop(server.proc)
    server.proc = _redis_proc(tmp, server.port)
    _wait_ready(server.proc, [(("127.0.0.1", server.port), b"PING\r\n", b"+PONG")],
                [server.log], "redis-server")


def _clamd_ask(sock: str, command: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(sock)
        s.sendall(command)
        out = b""
        while not out.endswith(b"\0"):
            data = s.recv(65536)
            if not data:
                break
            out += data
        return out.rstrip(b"\0")


@dataclass
class Cache:
    proc: subprocess.Popen[bytes]
    sock: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"clamd://{self.sock}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(_clamd_ask(self.sock, b"zSTATS\0"))
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
                                stderr=logf)
    cache = Cache(proc, sock, log_path)
    try:
        end = time.monotonic() + START_DEADLINE
        while True:
            with contextlib.suppress(OSError):
                if _clamd_ask(sock, b"zPING\0", 1.0) == b"PONG":
                    break
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"caching appliance did not come up:\n{cache.log()}")
            time.sleep(0.05)
        yield cache
    finally:
        stop_process(proc)
        shutil.rmtree(sockdir, ignore_errors=True)


@dataclass
class Builtin:
    """`vfile appliance serve` in a subprocess (reload its signatures with `reload()`)."""

    proc: subprocess.Popen[bytes]
    sock: str

    @property
    def url(self) -> str:
        return f"clamd://{self.sock}"

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)


@contextlib.contextmanager
def running_builtin_process(sigdir: Path) -> Iterator[Builtin]:
    sockdir = Path(tempfile.mkdtemp(prefix="vfb-"))
    sock = str(sockdir / "builtin.sock")
    log_path = sockdir / "log"
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(vfile_cmd("appliance", "serve", "--listen", f"unix://{sock}",
                                          "--signatures", str(sigdir)),
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    try:
        end = time.monotonic() + START_DEADLINE
        while True:
            with contextlib.suppress(OSError):
                if _clamd_ask(sock, b"zPING\0", 1.0) == b"PONG":
                    break
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError("built-in appliance did not come up:\n"
                                     + log_path.read_text(errors="replace"))
            time.sleep(0.05)
        yield Builtin(proc, sock)
    finally:
        stop_process(proc)
        shutil.rmtree(sockdir, ignore_errors=True)
