"""Group commit: many trio tasks, one durable LMDB write transaction per batch.

How it works (leader-based, no background task):
- A caller appends its operation (a function of the write transaction) to the
  pending list. If no leader exists it becomes the leader at once; otherwise
  it waits on its operation's own event.
- The leader takes the whole pending list as its batch and runs it inside ONE
  `trio.to_thread.run_sync` call (limiter `_write_limiter`, capacity 1): begin,
  every operation, commit -- an LMDB write transaction belongs to the thread
  that began it. It then sets every operation's event, and hands leadership
  to the first operation that arrived meanwhile (or leaves none). So each
  leader commits exactly one batch and returns: no caller is kept working for
  others for longer than one transaction.
- An operation returns only after the commit of its batch returned, i.e.
  after LMDB's fsync when the environment is opened with `sync=True`.

Invariants:
- Failure is all-or-nothing per batch: if any operation or the commit raises,
  the transaction is aborted and every caller in the batch gets a
  `JournalError` (its own instance; `JournalFull` for ENOSPC). Operations are
  therefore written not to raise for expected conditions: they return them.
- Operations are pure functions of (transaction, the arguments they captured):
  after `MapFullError` the map is doubled and the same batch re-run.
- Cancellation never loses or corrupts another caller's record:
  * a waiter cancelled while its operation is still pending removes it from
    the pending list (not acknowledged, not written -- both fine);
  * a waiter cancelled after its operation was taken into a batch simply
    stops waiting (the record may become durable without being acknowledged:
    the journal holds a superset of what was acknowledged);
  * the leader runs the batch under a shielded cancel scope: a transaction in
    a thread cannot be interrupted anyway, and abandoning it would leave the
    other callers of the batch without an answer. The shielded work is one
    bounded LMDB transaction; the leader sees its cancellation afterwards;
  * a promoted leader that is cancelled before leading passes leadership on.
- Map growth (`set_mapsize`) is only called from the trio thread, between
  transactions: reads are synchronous on the trio thread, and the only other
  thread touching the environment is the writer, which has finished.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import lmdb
import trio

from journal.records import JournalError, JournalFull
from journal.tables import Txn

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The map never grows past this; beyond it the journal reports itself full.
MAX_MAP_SIZE = 1 << 40

_PENDING, _LEAD, _DONE = 0, 1, 2


class _Op(Generic[T]):
    __slots__ = ("error", "event", "fn", "result", "state")

    def __init__(self, fn: Callable[[Txn], T]) -> None:
        self.fn = fn
        self.event = trio.Event()
        self.state = _PENDING
        self.result: Any = None
        self.error: JournalError | None = None


def translate(err: BaseException, where: str) -> JournalError:
    """A clear JournalError for an LMDB/OS failure in `where` (a path)."""
    if isinstance(err, JournalError):
        return type(err)(str(err))
    code = getattr(err, "errno", None)
    if isinstance(err, lmdb.MapFullError):
        return JournalFull(f"journal {where}: the map reached its maximum size; "
                           "nothing was written")
    if isinstance(err, lmdb.DiskError) or code == errno.ENOSPC or "No space left" in str(err):
        return JournalFull(f"journal {where}: disk full (no space left on device); "
                           "nothing was written")
    return JournalError(f"journal {where}: write failed: {err}")


class GroupCommitter:
    """Serialises write transactions on one environment, batching concurrent callers."""

    def __init__(self, env: lmdb.Environment, where: str,
                 on_map_full: Callable[[], bool], max_batch: int | None = None) -> None:
        self._env = env
        self._where = where
        # Called on the trio thread after MapFullError; returns False when it cannot grow.
        self._on_map_full = on_map_full
        self._pending: list[_Op[Any]] = []
        self._leading = False
        # None: unbounded batches. 1: one transaction per operation (benchmarks compare).
        self._max_batch = max_batch
        self._write_limiter = trio.CapacityLimiter(1)
        self.batches = 0
        self.ops = 0

    async def submit(self, fn: Callable[[Txn], T]) -> T:
        """Run `fn(txn)` in a durable write transaction shared with concurrent callers."""
        op: _Op[T] = _Op(fn)
        self._pending.append(op)
        if self._leading:
            finished = False
            try:
                await op.event.wait()
                finished = True
            finally:
                if not finished:
                    self._abandon(op)
            if op.state == _DONE:
                return self._outcome(op)
        else:
            self._leading = True
        return await self._lead(op)

    def _abandon(self, op: _Op[Any]) -> None:
        # Bounded cleanup for a waiter leaving on cancellation (see module docstring).
        if op.state == _PENDING and op in self._pending:
            self._pending.remove(op)
        elif op.state == _LEAD:
            self._hand_off()

    def _hand_off(self) -> None:
        if self._pending:
            nxt = self._pending[0]
            nxt.state = _LEAD
            nxt.event.set()
        else:
            self._leading = False

    async def _lead(self, op: _Op[T]) -> T:
        try:
            with trio.CancelScope(shield=True):
                # One scheduler round before taking the batch: the callers the
                # previous batch just woke usually defer again at once, and this
                # lets them join this batch instead of waiting for the next one.
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self._max_batch is None:
                    batch, self._pending = self._pending, []
                else:
                    batch = self._pending[: self._max_batch]
                    del self._pending[: self._max_batch]
                await self._commit(batch)
        finally:
            self._hand_off()
        return self._outcome(op)

    @staticmethod
    def _outcome(op: _Op[T]) -> T:
        if op.error is not None:
            raise op.error
        result: T = op.result
        return result

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the writer thread, between transactions (e.g. an env sync)."""
        return await trio.to_thread.run_sync(fn, limiter=self._write_limiter)

    async def _commit(self, batch: list[_Op[Any]]) -> None:
        try:
            while True:
                try:
                    await trio.to_thread.run_sync(self._run_batch, batch,
                                                  limiter=self._write_limiter)
                    break
                except lmdb.MapFullError:
                    if not self._on_map_full():
                        raise
                except lmdb.MapResizedError:
                    # Another process grew the map: adopt its size, run the batch again.
                    self._env.set_mapsize(0)
        except Exception as err:  # every caller of the batch gets the failure
            log.error("journal %r: transaction of %d operations failed: %s",
                      self._where, len(batch), err)
            for o in batch:
                o.error = translate(err, self._where)
        self.batches += 1
        self.ops += len(batch)
        for o in batch:
            o.state = _DONE
            o.event.set()

    def _run_batch(self, batch: list[_Op[Any]]) -> None:
        txn = self._env.begin(write=True)
        try:
            results = [o.fn(txn) for o in batch]
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        # Only after the commit: a retried batch must not see half-set results.
        for o, r in zip(batch, results, strict=True):
            o.result = r
