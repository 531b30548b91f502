"""Helpers the I/O benchmarks share (passthrough.py, datapath.py): dropping a
file's page cache, timing N operations one by one, and a sequential write."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def drop_cache(*paths: Path) -> None:
    """Write back, then drop the page cache of each file, so the next read comes
    from the device (for a mount: pass the FUSE file and its source file)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(n: int, op: Callable[[int], object]) -> tuple[float, list[int]]:
    """Run `op(0)` … `op(n-1)`: (operations per second, each one's latency in ns)."""
    lat = []
    clock = time.perf_counter_ns
    t0 = clock()
    for i in range(n):
        a = clock()
        op(i)
        lat.append(clock() - a)
    return n / ((clock() - t0) / 1e9), lat


def seq_write(d: Path, size: int) -> float:
    """Write `size` bytes to d/seq in 1 MiB writes, to the close: MiB/s."""
    buf = os.urandom(MiB)
    t0 = time.perf_counter()
    fd = os.open(d / "seq", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(size // MiB):
        os.write(fd, buf)
    os.close(fd)
    return size / MiB / (time.perf_counter() - t0)


def cpu_ns(pid: int) -> int:
    """CPU time (user + system, ns) every thread of `pid` has run so far, from
    /proc/PID/task/*/schedstat: nanosecond resolution, unlike /proc/PID/stat's ticks.
    A server's CPU per request is what a loaded machine does not blur: wall-clock
    rates move ±30 % with the neighbours, the server's own CPU time much less."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def server_pid(mountpoint: Path) -> int:
    """The pid of the process serving `mountpoint` (a `vfile mount --foreground` child)."""
    want = os.fsencode(str(mountpoint))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in args and b"--foreground" in args:
            return int(proc.name)
    raise LookupError(f"no server process for {mountpoint}")


def emit(report: dict[str, Any], path: Path | None) -> int:
    """Print a bench's JSON report (and write it to `path`); the exit status."""
    print(json.dumps(report))
    if path is not None:
        path.write_text(json.dumps(report, indent=2) + "\n")
    return 0
