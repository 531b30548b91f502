"""The group committer's fsync thread: tier-1 batches made durable off the writer's path.

The writer (journal.commit) commits a batch holding a tier-1 operation and
hands it here (`add`), then goes on committing the next batches while this
thread fsyncs. One fsync serves every batch handed over before it began; their
tier-1 callers are told (`deliver`) once it returned. So a tier-2 record (an
unscanned read's) never waits for a tier-1 fsync: on a busy host that fsync
took 50-260 ms, and a read-open queued behind it took as long (issue 16).

Threading: `add` is called from the writer thread; the fsyncs run in a thread
of trio's cache, started on demand and ended when nothing is left. An fsync
error fails the tier-1 callers of the batches it was for (their records are
committed, not known durable); the next fsync is tried afresh, but only after
`EnvFsync` wrote every page of the environment again (below).

`EnvFsync`, every fsync of the environment (this thread's, the background sync's,
quiesce's, close's): after a failed writeback Linux marks the pages it could not
write clean, and a later fsync returns 0 without writing them ("fsyncgate"). LMDB
never rewrites a page a commit did not change, so the next commit's tree points at
those pages: made durable on top of them, it lost a whole leaf of records that had
been durable for long at the next power cut (tests/t5_attack17_fsync_test.py). So
after a failed fsync, the next one first writes every used page of the data file
again from the page cache (which holds what the disk did not get), under LMDB's
write lock so no commit writes a page meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import lmdb
import outcome
import trio

from vfile.journal.records import JournalError

log = logging.getLogger(__name__)

B = TypeVar("B")
#: bytes read and written again per call while rewriting the data file
REWRITE_CHUNK = 4 << 20


class EnvFsync:
    """fsync of an LMDB environment that survives Linux's fsync error semantics (module
    doc); blocking, called with the committer's sync lock held (one at a time)."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self.rewrite_due = False  # an fsync failed: its pages may be clean, not on disk
        self.rewrites = 0

    def __call__(self) -> None:
        if self.rewrite_due:
            self._rewrite()
        try:
            self._env.sync(True)
        except lmdb.Error:
            self.rewrite_due = True
            raise
        self.rewrite_due = False

    def _rewrite(self) -> None:
        txn = self._env.begin(write=True)  # LMDB's write lock: no commit writes meanwhile
        try:
            end = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
            fd = os.open(os.path.join(self._env.path(), "data.mdb"), os.O_RDWR | os.O_CLOEXEC)
            try:
                offset = 0
                while offset < end:
                    data = os.pread(fd, min(REWRITE_CHUNK, end - offset), offset)
                    if not data:
                        break
                    view = memoryview(data)
                    while view:  # dirty again: the next fsync writes them
                        view = view[os.pwrite(fd, view, offset + len(data) - len(view)):]
                    offset += len(data)
            finally:
                os.close(fd)
        except OSError as err:
            raise lmdb.Error(f"rewriting the data file after a failed fsync: {err}") from err
        finally:
            txn.abort()
        self.rewrites += 1
        log.warning("journal %r: every page written again after a failed fsync (%d bytes)",
                    self._env.path(), end)


class Syncer(Generic[B]):
    def __init__(self, sync: Callable[[], None],
                 deliver: Callable[[list[B], BaseException | None], None], where: str) -> None:
        self._sync = sync  # blocking: one fsync of the environment
        self._deliver = deliver  # must not block (posts to the trio thread)
        self._where = where
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: list[B] = []
        self._running = False

    def add(self, batch: B) -> None:
        """`batch` is committed: fsync it (with whatever else is handed over meanwhile)."""
        with self._lock:
            self._pending.append(batch)
            start, self._running = not self._running, True
        if start:
            trio.lowlevel.start_thread_soon(self._run, self._ended, name="journal fsync")

    def wait_idle(self, timeout: float) -> bool:
        """Wait (blocking) until no fsync thread runs; for close()."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._running, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                batches, self._pending = self._pending, []
                if not batches:
                    self._running = False
                    self._idle.notify_all()
                    return
            error: Exception | None = None
            try:
                self._sync()
            except Exception as err:
                log.error("journal %r: fsync failed: %s", self._where, err)
                error = err
            self._deliver(batches, error)

    def _ended(self, result: outcome.Outcome[None]) -> None:
        try:
            result.unwrap()
        except BaseException as err:  # a bug: never leave tier-1 callers waiting forever
            log.critical("journal %r: fsync thread died: %r", self._where, err)
            with self._lock:
                stranded, self._pending = self._pending, []
                self._running = False
                self._idle.notify_all()
            self._deliver(stranded, JournalError(f"journal {self._where}: fsync thread "
                                                 f"died: {err!r}"))


class _Synced(Protocol):
    """A committed batch, as `Unsynced` sees it (journal.commit's _Batch)."""

    synced: trio.Event
    sync_error: BaseException | None


class Unsynced:
    """A committed tier-1 record whose fsync may still be under way: the group
    committer's `submit_defer_unsynced` (an existing file's write intent, awaited
    before the file's first write rather than in its open: issue 16)."""

    __slots__ = ("_batch", "_fail", "_sync")

    def __init__(self, batch: _Synced, sync: Callable[[], None],
                 fail: Callable[[BaseException], JournalError]) -> None:
        self._batch: _Synced | None = batch
        self._sync = sync  # blocking: one fsync of the environment
        self._fail = fail

    @property
    def durable(self) -> bool:
        """Known durable (`wait` has nothing left to wait for)."""
        b = self._batch
        return b is None or (b.synced.is_set() and b.sync_error is None)

    async def wait(self) -> None:
        """Return once the record is durable: its batch's fsync returned, or (that one
        failed) a fresh fsync, begun after the commit, did. JournalError if neither."""
        batch = self._batch
        if batch is None:
            return
        await batch.synced.wait()
        if batch.sync_error is not None:
            try:
                await trio.to_thread.run_sync(self._sync, abandon_on_cancel=True)
            except Exception as err:
                raise self._fail(err) from None
        self._batch = None  # later waits return at once; the batch can go
