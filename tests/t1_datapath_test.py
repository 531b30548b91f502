"""vfile.passthrough.datapath on real files: same bytes as pread, and the right place
(inline or a thread) for each read."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

import pytest

from vfile.passthrough.datapath import DataPath


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[int, int, bytes]:
    body = os.urandom(300_000)
    path = tmp_path / "f"
    path.write_bytes(body)
    fd = os.open(path, os.O_RDWR)
    return fd, os.fstat(fd).st_dev, body


def resident_pages(fd: int, size: int) -> int:
    """How many of the file's first `size` bytes' pages are in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as m:  # (from_buffer: writable)
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        try:
            if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec):
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del addr
        return sum(b & 1 for b in vec)


def evict(fd: int, size: int) -> None:
    """Drop the file's pages from the page cache. One DONTNEED is not always enough: a
    page still in another CPU's LRU batch is skipped (fadvise drains only its own)."""
    os.fsync(fd)
    deadline = time.monotonic() + 30
    while True:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if not resident_pages(fd, size):
            return
        assert time.monotonic() < deadline, "the page cache kept the file's pages"
        time.sleep(0.05)


async def test_cached_reads_stay_inline_and_match_pread(data_file: tuple[int, int, bytes]
                                                        ) -> None:
    fd, dev, body = data_file
    dp = DataPath()
    os.pread(fd, len(body), 0)  # all of it in the page cache
    for off, size in ((0, 4096), (4096, 131072), (299_000, 131072), (400_000, 4096)):
        assert bytes(await dp.read(fd, dev, off, size)) == body[off:off + size]
    assert dp.thread_reads == 0 and dp.inline_reads == 4
    os.close(fd)


async def test_a_read_that_would_wait_for_the_device_goes_to_a_thread(
        data_file: tuple[int, int, bytes]) -> None:
    fd, dev, body = data_file
    dp = DataPath()
    # A NOWAIT read of pages not cached starts their readahead; on a fast device it can
    # land before the read looks again, and the read is then served inline, without
    # having waited. So: evict and read until one of them found nothing cached.
    for _ in range(50):
        evict(fd, len(body))  # nothing cached
        assert bytes(await dp.read(fd, dev, 8192, 65536)) == body[8192:8192 + 65536]
        if dp.thread_reads:
            break
    assert dp.thread_reads == 1, "no read of pages not cached went to a thread"
    assert dev in dp.fast_devices and dev not in dp.slow_devices
    os.close(fd)


async def test_writes_and_fsync(data_file: tuple[int, int, bytes]) -> None:
    fd, dev, _body = data_file
    dp = DataPath()
    assert await dp.write(fd, dev, 10, b"hello") == 5
    await dp.fsync(fd, datasync=True)
    await dp.fsync(fd, datasync=False)
    assert os.pread(fd, 5, 10) == b"hello"
    assert dp.thread_writes == 0  # a local page-cache filesystem: inline
    os.close(fd)


async def test_a_device_without_nowait_is_served_by_threads(
        data_file: tuple[int, int, bytes]) -> None:
    fd, dev, body = data_file
    dp = DataPath()
    dp.slow_devices.add(dev)  # as when preadv2(RWF_NOWAIT) said EOPNOTSUPP
    assert bytes(await dp.read(fd, dev, 0, 100)) == body[:100]
    assert await dp.write(fd, dev, 0, b"x") == 1
    assert (dp.thread_reads, dp.thread_writes, dp.inline_reads) == (1, 1, 0)
    os.close(fd)
