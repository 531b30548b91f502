"""A read-only open reaches the inode the kernel asked for, even when its name now
names something else in the source (swapped behind vfile's back while the kernel
still trusts its cached entry). vfile opens read-only files by their last name
relative to the parent's descriptor (faster than /proc/self/fd/N) and must verify
that what it opened is that inode, without blocking on a FIFO put at the name."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounting import Server, mounted

pytestmark = pytest.mark.mount

#: tries before giving up on the kernel keeping its entry across the swap (its
#: entry timeout is 1 s; a loaded machine may let it expire once in a while)
TRIES = 20


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    base = Path(tempfile.mkdtemp(prefix="vfile-t4-byname-"))
    try:
        (base / "src").mkdir()
        (base / "mnt").mkdir()
        with mounted(base / "src", base / "mnt") as srv:
            yield srv
    finally:
        shutil.rmtree(base, ignore_errors=True)


def read_in_thread(path: Path) -> tuple[bytes, int]:
    """(content, st_ino) of `path` opened read-only; fails instead of hanging."""
    out: list[tuple[bytes, int]] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                out.append((os.read(fd, 100), os.fstat(fd).st_ino))
            finally:
                os.close(fd)
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), f"open of {path} hung (the daemon blocked on the swapped name)"
    if err:
        raise err[0]
    return out[0]


def swapped(server: Server, tag: str, put: Callable[[Path], None]) -> tuple[bytes, int, int]:
    """Through the mount: a file `old`; behind vfile's back its name gets `put`; then
    a read-only open through the mount. (content read, st_ino before, st_ino opened)"""
    for i in range(TRIES):
        name = f"{tag}{i}"
        (server.mountpoint / name).write_bytes(b"old")
        before = read_in_thread(server.mountpoint / name)
        assert before[0] == b"old"
        src = server.source / name
        src.rename(server.source / f"{name}.moved")
        put(src)
        content, ino = read_in_thread(server.mountpoint / name)
        if ino == before[1]:
            return content, before[1], ino
        # the kernel looked the name up again: nothing swapped under it, try again
    pytest.fail(f"the kernel never kept its entry across the swap in {TRIES} tries")


def test_a_file_swapped_in_at_the_name_is_not_opened(server: Server) -> None:
    content, _, _ = swapped(server, "f", lambda p: p.write_bytes(b"NEW!!"))
    assert content == b"old"


def test_a_fifo_swapped_in_at_the_name_neither_blocks_nor_is_opened(server: Server) -> None:
    content, _, _ = swapped(server, "p", os.mkfifo)
    assert content == b"old"


def test_a_file_renamed_through_the_mount_opens_by_its_new_name(server: Server) -> None:
    (server.mountpoint / "r").write_bytes(b"renamed")
    os.rename(server.mountpoint / "r", server.mountpoint / "r2")
    (server.source / "r").write_bytes(b"decoy")  # the old name now names another file
    assert read_in_thread(server.mountpoint / "r2")[0] == b"renamed"
