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
committed, not known durable); the next fsync is tried afresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import outcome
import trio

from vfile.journal.records import JournalError

log = logging.getLogger(__name__)

B = TypeVar("B")


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
