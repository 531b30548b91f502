"""State disks for tests: a loop ext4 that can be frozen, a power-cuttable FUSE
filesystem (`cutfs.py`), a tiny tmpfs that can be filled; and the status figures
the tests read about the journal's durability while such a disk misbehaves.

Plain helpers shared by several test modules (test modules never import each
other: tests/t0_test_imports_test.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lifecycle import cli
from mounting import force_unmount, is_mounted, stop_process, wait_for

CUTFS = Path(__file__).with_name("cutfs.py")


@contextlib.contextmanager
def loop_ext4(where: Path, size_mb: int = 64, *, journal: bool = True) -> Iterator[Path]:
    """A fresh ext4 on a loop device mounted at `where`/fs; thawed and unmounted after."""
    img, mnt = where / "statefs.img", where / "statefs"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", *([] if journal else ["-O", "^has_journal"]),
                    str(img)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True,
                   capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], check=False, capture_output=True)
        for _ in range(50):
            if subprocess.run(["umount", str(mnt)], check=False,
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@contextlib.contextmanager
def frozen(fs: Path) -> Iterator[None]:
    subprocess.run(["fsfreeze", "-f", str(fs)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["fsfreeze", "-u", str(fs)], check=True, capture_output=True)


def status_json(mnt: Path, timeout: float = 20) -> dict[str, object]:
    res = cli("status", str(mnt), "--json", timeout=timeout)
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


def durability(mnt: Path) -> dict[str, int]:
    journal = status_json(mnt)["journal"]
    assert isinstance(journal, dict)
    out: dict[str, int] = journal["durability"]
    return out


def opens_within(paths: list[Path], deadline: float) -> dict[Path, float | None]:
    """Open and read each path in its own thread; seconds each took, or None if it
    had not returned within `deadline` (the thread is left to finish)."""
    took: dict[Path, float | None] = dict.fromkeys(paths)

    def one(p: Path) -> None:
        t = time.monotonic()
        p.read_bytes()
        took[p] = time.monotonic() - t

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in paths]
    for th in threads:
        th.start()
    end = time.monotonic() + deadline
    for th in threads:
        th.join(max(0.0, end - time.monotonic()))
    return took


@contextlib.contextmanager
def cutfs(backing: Path, mnt: Path) -> Iterator[subprocess.Popen[bytes]]:
    """cutfs serving `backing` on `mnt`; killed (SIGKILL: nothing more reaches
    `backing`) and unmounted on exit."""
    log = backing.parent / "cutfs.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, str(CUTFS), str(backing), str(mnt)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for("cutfs to mount", lambda: is_mounted(mnt) or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        force_unmount(mnt)
        stop_process(proc)


@pytest.fixture
def small_state() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="vfile-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)  # never left mounted
        where.rmdir()


def fill(where: Path) -> None:
    fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
