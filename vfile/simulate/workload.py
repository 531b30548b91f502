"""The guest's I/O through the mount: real open/read/write/close syscalls, each timed.

Actors are threads (the syscalls release the GIL), plus short `cat`/`cp`
subprocesses for the "user" steps so that vfile's exposure trail names a
recognisable command. Every open and close goes into the `Recorder` as an
`Op`: when (seconds since the workload started), which actor, which path,
how long it took, and whether it succeeded (and errno if not).

- readers: loop over the hot files (scanned once, then cached)
- indexer: reads each cold file once, in order, paced to span the whole run
- writers: read-modify-write their own state file (open O_RDWR, so the open is
  scanned like any read) and close it (the close schedules the after-write scan)

Actors stop when `stop` is set; a blocked open returns at the latest after the
profile's deadline, so stopping is bounded.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

READ_CHUNK = 1 << 16
#: pause between two operations of one actor: keeps 2 shared cores usable
READER_PAUSE = 0.03
WRITER_PAUSE = 0.08


@dataclass(frozen=True, slots=True)
class Op:
    t: float
    actor: str
    kind: str  # "open" | "close" | "write" (a writer's pwrite)
    path: str
    latency: float
    ok: bool
    errno: int = 0
    write: bool = False


@dataclass
class Recorder:
    t0: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def snapshot(self) -> list[Op]:
        with self._lock:
            return list(self.ops)


def timed_open(rec: Recorder, actor: str, mnt: Path, rel: str, flags: int, *,
               write: bool = False) -> int | None:
    """Open mnt/rel, record the open; the fd, or None if it failed."""
    t = rec.now()
    start = time.perf_counter()
    try:
        fd = os.open(mnt / rel, flags | os.O_CLOEXEC)
    except OSError as err:
        rec.add(Op(t, actor, "open", rel, time.perf_counter() - start, False,
                   err.errno or errno.EIO, write))
        return None
    rec.add(Op(t, actor, "open", rel, time.perf_counter() - start, True, 0, write))
    return fd


def timed_close(rec: Recorder, actor: str, rel: str, fd: int, *, write: bool = False) -> None:
    t = rec.now()
    start = time.perf_counter()
    try:
        os.close(fd)
    except OSError as err:
        rec.add(Op(t, actor, "close", rel, time.perf_counter() - start, False,
                   err.errno or errno.EIO, write))
        return
    rec.add(Op(t, actor, "close", rel, time.perf_counter() - start, True, 0, write))


def read_file(rec: Recorder, actor: str, mnt: Path, rel: str) -> bool:
    fd = timed_open(rec, actor, mnt, rel, os.O_RDONLY)
    if fd is None:
        return False
    try:
        while os.read(fd, READ_CHUNK):
            pass
    except OSError:
        pass
    finally:
        timed_close(rec, actor, rel, fd)
    return True


def rewrite_file(rec: Recorder, actor: str, mnt: Path, rel: str, payload: bytes, *,
                 fsync: bool = False) -> bool:
    """Read-modify-write: open O_RDWR (a scanned open), read a block, write, close."""
    fd = timed_open(rec, actor, mnt, rel, os.O_RDWR, write=True)
    if fd is None:
        return False
    try:
        os.pread(fd, 4096, 0)
        # Timed too: a write-open's intent is fsynced before its first WRITE reaches
        # the source (vfile.filter.writeintents), so a wait may show here or at close.
        t, start = rec.now(), time.perf_counter()
        os.pwrite(fd, payload, 0)
        if fsync:
            os.fsync(fd)
        rec.add(Op(t, actor, "write", rel, time.perf_counter() - start, True, 0, True))
    except OSError:
        pass
    finally:
        timed_close(rec, actor, rel, fd, write=True)
    return True


class Workload:
    """The background actors; `start()` them, `stop()` waits for them."""

    def __init__(self, rec: Recorder, mnt: Path, *, hot: list[str], cold: list[str],
                 state: list[str], readers: int, duration: float, seed: int) -> None:
        self.rec = rec
        self.mnt = mnt
        self.hot = hot
        self.cold = cold
        self.state = state
        self.readers = readers
        self.duration = duration
        self.seed = seed
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []

    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=f"sim-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def start(self) -> None:
        for i in range(self.readers):
            self._spawn(f"reader-{i}", functools.partial(self._reader, i))
        self._spawn("indexer", self._indexer)
        for i, rel in enumerate(self.state):
            self._spawn(f"writer-{i}", functools.partial(self._writer, i, rel))

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout)

    def _reader(self, i: int) -> None:
        rng = random.Random(self.seed * 100 + i)
        while not self.stop_event.is_set():
            read_file(self.rec, f"reader-{i}", self.mnt, rng.choice(self.hot))
            self.stop_event.wait(READER_PAUSE)

    def _indexer(self) -> None:
        # Paced so that the sweep spans the whole run: every phase reads new files.
        interval = self.duration / max(1, len(self.cold))
        for n, rel in enumerate(self.cold):
            if self.stop_event.is_set():
                return
            read_file(self.rec, "indexer", self.mnt, rel)
            delay = (n + 1) * interval - self.rec.now()
            if delay > 0 and self.stop_event.wait(delay):
                return

    def _writer(self, i: int, rel: str) -> None:
        rng = random.Random(self.seed * 1000 + i)
        while not self.stop_event.is_set():
            rewrite_file(self.rec, f"writer-{i}", self.mnt, rel, rng.randbytes(4096))
            self.stop_event.wait(WRITER_PAUSE)


def run_command(rec: Recorder, actor: str, argv: list[str], rel: str, *,
                write: bool = False) -> bool:
    """A user command (`cat`, `cp`) on a file in the mount, recorded as one open
    (its whole run: the command's open is what waits); True if it succeeded."""
    t = rec.now()
    start = time.perf_counter()
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, check=False, timeout=600)
    took = time.perf_counter() - start
    err = 0
    if res.returncode != 0:
        text = res.stderr.decode(errors="replace")
        err = errno.EACCES if "denied" in text else errno.ENOENT if "No such" in text \
            else errno.EIO
    rec.add(Op(t, actor, "open", rel, took, res.returncode == 0, err, write))
    return res.returncode == 0
