"""One slow read must not stall the mount (issue 15, data path).

The source is bench/slowfs.py, a FUSE filesystem whose `slow` file can be made
to take seconds per read (a cold disk or a network filesystem under the
source). While a reader is stuck in such a read through a scanning vfile
mount, cached opens of another file must be answered: the daemon reads off
the trio thread when a read could block. Asserted by order, not by timing:
every cached open finishes while the slow read is still in progress.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import force_unmount, is_mounted, mounted, stop_process

pytestmark = pytest.mark.mount

SLOWFS = Path(__file__).resolve().parent.parent / "bench" / "slowfs.py"
DELAY = 5.0  # seconds per read of the slow file: far longer than any cached open


@pytest.fixture
def slow_source(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a slowfs mountpoint, its control directory)."""
    src, control = tmp_path / "slowsrc", tmp_path / "control"
    src.mkdir()
    control.mkdir()
    proc = subprocess.Popen([sys.executable, str(SLOWFS), str(src), str(control)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(src):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "slowfs did not mount"
            time.sleep(0.02)
        yield src, control
    finally:
        (control / "delay").unlink(missing_ok=True)
        force_unmount(src)
        stop_process(proc)


def direct_read(path: Path, size: int = 64 * 1024) -> int:
    """One O_DIRECT read (the kernel sends it to the daemon whatever it cached)."""
    buf = mmap.mmap(-1, size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)


def test_cached_opens_are_not_stuck_behind_a_slow_source_read(
        tmp_path: Path, slow_source: tuple[Path, Path]) -> None:
    src, control = slow_source
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    with mounted(src, mnt, "--state-dir", str(state)):
        for name in ("fast", "slow"):  # scanned now: their next opens are cached
            assert len((mnt / name).read_bytes()) == 256 * 1024
        (control / "delay").write_text(str(DELAY))
        slow_done: list[float] = []

        def slow_reader() -> None:
            assert direct_read(mnt / "slow") == 64 * 1024
            slow_done.append(time.monotonic())

        reader = threading.Thread(target=slow_reader)
        started = time.monotonic()
        reader.start()
        time.sleep(0.5)  # let its read reach the daemon and the source
        for _ in range(20):
            os.close(os.open(mnt / "fast", os.O_RDONLY))
        opens_done = time.monotonic()
        reader.join(60)
        assert slow_done, "the slow read never finished"
        assert slow_done[0] - started >= DELAY * 0.9, "the read was not slow: no test"
        assert opens_done < slow_done[0], (
            f"cached opens waited for the slow read: done {opens_done - started:.1f}s "
            f"after it started, the read {slow_done[0] - started:.1f}s")
