"""Helpers the I/O benchmarks share (passthrough.py, datapath.py): dropping a
file's page cache, timing N operations one by one, and a sequential write."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

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
