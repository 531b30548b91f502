"""Reads, writes and syncs of open files: inline when they cannot block, in
threads when they could, so one slow source read never stalls the mount.

Every FUSE request is served by the one trio thread; a `pread` that waits for
a cold disk or a network filesystem under the source would stall every other
request (cached opens included) for as long. A thread hop is no answer for
every request: it costs tens of microseconds on an idle machine and hundreds
under load (bench/datapath.py, `thread_hop_us`), against ~7 µs for a cached
4 KiB pread. So:

- read: `preadv2(RWF_NOWAIT)` inline, which returns at once from the source's
  page cache and never waits for the device. EAGAIN (not cached) or a short
  read before EOF: the rest in a thread. A source filesystem without NOWAIT
  (EOPNOTSUPP: FUSE, NFS and the like, the slow ones) is remembered by device,
  and its reads and writes go to threads from then on.
- write: inline to a local page-cache filesystem (a buffered write that fits
  the page cache does not wait for the device; ext4 has no RWF_NOWAIT for
  buffered writes to tell), in a thread on a device known to be slow.
- fsync / fdatasync: always in a thread (they wait for the device by design).

Threads come from one CapacityLimiter per mount (`DATA_THREADS`), apart from the
scanner's and the journal's, so slow data I/O cannot starve a scan or a commit.
Invariant: the bytes and errors a caller sees are those of plain pread/pwrite.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TypeVar, cast

import trio

#: threads doing data I/O at once (a slow source ties one up per request)
DATA_THREADS = 16

T = TypeVar("T")

_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


class DataPath:
    """The read/write/fsync policy above; one per mount (it remembers slow devices)."""

    def __init__(self, threads: int = DATA_THREADS) -> None:
        self.limiter = trio.CapacityLimiter(threads)
        #: source devices without RWF_NOWAIT (their I/O always goes to threads),
        #: and those with it
        self.slow_devices: set[int] = set()
        self.fast_devices: set[int] = set()
        self.inline_reads = 0
        self.thread_reads = 0
        self.thread_writes = 0

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def read(self, fd: int, dev: int, off: int, size: int) -> bytes:
        """pread's answer; may be a bytearray, which pyfuse3 replies from like bytes."""
        if not _NOWAIT or dev in self.slow_devices:
            self.thread_reads += 1
            return await self._thread(os.pread, fd, size, off)
        buf = bytearray(size)
        try:
            n = os.preadv(fd, [buf], off, _NOWAIT)
        except BlockingIOError:  # nothing cached at `off`
            self.fast_devices.add(dev)
            self.thread_reads += 1
            return await self._thread(os.pread, fd, size, off)
        except OSError as err:
            if err.errno != errno.EOPNOTSUPP:
                raise
            self.slow_devices.add(dev)
            self.thread_reads += 1
            return await self._thread(os.pread, fd, size, off)
        self.fast_devices.add(dev)
        # 0 is EOF (not cached would have been EAGAIN); a short read is EOF, or
        # the part that was cached
        if n in (size, 0) or off + n >= os.fstat(fd).st_size:
            self.inline_reads += 1
            return cast(bytes, buf if n == size else buf[:n])  # pyfuse3 takes any buffer
        self.thread_reads += 1
        rest = await self._thread(os.pread, fd, size - n, off + n)
        return bytes(buf[:n]) + rest

    async def write(self, fd: int, dev: int, off: int, buf: bytes) -> int:
        if dev not in self.fast_devices and dev not in self.slow_devices:
            self._classify(fd, dev)
        if dev in self.slow_devices:
            self.thread_writes += 1
            return await self._thread(write_all, fd, buf, off)
        return write_all(fd, buf, off)

    def _classify(self, fd: int, dev: int) -> None:
        """Whether `dev` has RWF_NOWAIT, by a one-byte read that cannot block."""
        if not _NOWAIT:
            return
        try:
            os.preadv(fd, [bytearray(1)], 0, _NOWAIT)
        except BlockingIOError:
            pass
        except OSError as err:
            if err.errno == errno.EOPNOTSUPP:
                self.slow_devices.add(dev)
            return  # EBADF (a write-only descriptor): ask again on the next write
        self.fast_devices.add(dev)

    async def fsync(self, fd: int, datasync: bool) -> None:
        await self._thread(os.fdatasync if datasync else os.fsync, fd)

    def statistics(self) -> dict[str, int]:
        return {"inline_reads": self.inline_reads, "thread_reads": self.thread_reads,
                "thread_writes": self.thread_writes, "slow_devices": len(self.slow_devices),
                "threads_busy": self.limiter.borrowed_tokens}


def write_all(fd: int, buf: bytes, off: int) -> int:
    """pwrite until all of `buf` is written (FUSE needs all of it, or an error)."""
    done = os.pwrite(fd, buf, off)
    if done < len(buf):
        view = memoryview(buf)
        while done < len(buf):
            done += os.pwrite(fd, view[done:], off + done)
    return done
