"""Group commit: many trio tasks, one durable LMDB write transaction per batch.

How it works (a pipelined writer thread, no background task):
- A caller appends its operation to the open batch (the newest pending one)
  and waits on that batch's event. A defer arrives prepared (ops.py:
  seq, keys and encoded value computed on the trio thread); any other write
  is a function of the write transaction.
- If no writer is running, the caller starts one: a single thread call
  (`trio.lowlevel.start_thread_soon`) that takes pending batches one after
  the other -- begin, every operation, commit -- until none is left. An LMDB
  write transaction thus begins and commits in the same thread, and no trio
  task is kept waiting for anybody else's records.
- Pipelining: when the commit of batch N returns, the writer takes batch N+1
  (which accumulated meanwhile) and applies its operations at once; only
  then does it tell the trio thread that N is committed, and commit N+1.
  The trio thread thus wakes N's callers, and they prepare their next
  records, while the writer sits in N+1's commit with the GIL released --
  rather than competing for the GIL with the writer's own puts.
- A batch's callers are woken on the trio thread (via the run's token): its
  tier-2 callers once its commit returned, its tier-1 callers (README
  "Durability of journal records") once an fsync that began after that commit
  returned, in a thread of its own (journal.syncer): a tier-2 record never
  waits for a tier-1 fsync.

Lingering (the drain's completions, creates' intents and the close scans'
completions queued behind them, `linger=True`): a batch of nothing but
lingering operations is taken only once it holds `LINGER_OPS` of them, or
`LINGER_S` after it was opened, or as soon as any other operation joins it.
Without it the drain's completions, arriving one at a time, made transactions
of two or three operations each (strace: 2,100 for 5,000 files), each with
its own page writes, thread hand-offs and wake-ups; a create under scanning made
two transactions (its intent, then its close scan's completion), now mostly one
shared with the next creates'. Nobody else waits longer:
an open's record never lingers, and joining a lingering batch ends its wait.
The writer tells the callers of the batch before (`done`) before it lingers,
and with nothing to do it waits `WRITER_KEEP_S` for a new batch before its
thread ends (a thread start per transaction was a few % of the drain's time).

Durability tiers (the environment is opened with `sync=False`, so a commit
alone reaches the OS page cache: it survives a process crash, not a power
loss):
- tier 1, `durable=True` (the default for every write): the batch's commit is
  followed by `env.sync(True)` before any of its callers is woken. One fsync
  serves the whole batch, and every earlier non-durable commit with it.
- tier 2, `durable=False`: committed without fsync; `sync_if_dirty` (called
  every `sync_interval` by the mount, and at quiesce, resume and close)
  makes it durable later.
- tier 3: a tier-2 caller may stop waiting (its deadline passed: a frozen or
  slow state disk) without taking its record back: the record stays queued
  in memory (`held`) and is written when the disk takes writes again. The
  queue is bounded (`MAX_QUEUED`): beyond it a tier-2 write is refused with
  `JournalFull` at once rather than queued.

Invariants:
- Failure is all-or-nothing per batch: if any operation or the commit raises,
  the transaction is aborted and every caller in the batch gets a
  `JournalError` (its own instance; `JournalFull` for ENOSPC). Operations are
  therefore written not to raise for expected conditions: they return them.
- Operations are pure functions of (transaction, the arguments they captured):
  after `MapFullError` the batch is run again once the map has grown.
- Map growth (`set_mapsize`) happens only on the trio thread, with no writer
  running: on `MapFullError` (or `MapResizedError`) the writer aborts, hands
  the batch back and stops; the trio thread grows the map (or adopts another
  process's size), puts the batch back first in line and starts a writer.
  Reads are synchronous on the trio thread, so no read is open then either.
- Cancellation never loses or corrupts another caller's record:
  * a waiter cancelled while its batch is still pending takes its operation
    out of it (not acknowledged, not written -- both fine), unless the
    operation is a held tier-2 record (`hold=True`): that one stays queued;
  * a waiter cancelled after its batch was taken simply stops waiting (the
    record may become durable without being acknowledged: the journal holds
    a superset of what was acknowledged). Nobody leads, so nobody has to
    pass anything on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import lmdb
import outcome
import trio

from vfile.journal.failures import log_failure, translate
from vfile.journal.ops import BatchWriter, PreparedDefer
from vfile.journal.records import JournalError, JournalFull
from vfile.journal.syncer import EnvFsync, Syncer, Unsynced
from vfile.journal.tables import Tables, Txn

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The map never grows past this; beyond it the journal reports itself full.
MAX_MAP_SIZE = 1 << 40
#: Operations waiting for a writer, beyond which a tier-2 write is refused at once
#: (a state disk that takes no writes must not grow our memory without bound).
#: A queued defer is a few hundred bytes: 64k of them are tens of MiB.
MAX_QUEUED = 65536

#: a batch of lingering operations (module docstring) waits for this many ... (below
#: the drain's completions in flight, vfile.filter.drain: 8 scans x 4 - 8, else the
#: drain would stop scanning until LINGER_S passed)
LINGER_OPS = 16
#: ... or this long after its first operation arrived
LINGER_S = 0.01
#: a writer with nothing to do waits this long for a new batch before its thread ends
WRITER_KEEP_S = 0.02

_PENDING, _TAKEN, _DONE = 0, 1, 2


class _Op(Generic[T]):
    __slots__ = ("durable", "fn", "held", "on_done", "result")

    def __init__(self, fn: Callable[[Txn], T], durable: bool = True) -> None:
        self.fn = fn
        self.result: Any = None
        self.durable = durable
        self.held = False
        self.on_done: Callable[[JournalError | None], None] | None = None  # submit_soon's


class _Batch:
    __slots__ = ("born", "durable", "error", "event", "hurry", "ops", "state", "sync_error",
                 "synced")

    def __init__(self) -> None:
        self.ops: list[Any] = []  # _Op | PreparedDefer, in arrival order
        self.event = trio.Event()  # committed (or failed): tier-2 callers wake
        self.synced = trio.Event()  # and fsynced (or failed): tier-1 callers wake
        self.state = _PENDING
        self.error: BaseException | None = None
        self.sync_error: BaseException | None = None
        self.durable = False  # some operation needs the fsync (tier 1)
        self.hurry = False  # some operation may not linger
        self.born = time.monotonic()

    def lingers(self, now: float) -> bool:
        """Whether the writer should wait for more operations before taking it."""
        return not self.hurry and len(self.ops) < LINGER_OPS and now < self.born + LINGER_S


class _NeedsGrowth(Exception):
    """The writer stops: the map must grow (or be re-read) on the trio thread."""


class GroupCommitter:
    """Serialises write transactions on one environment, batching concurrent callers."""

    def __init__(self, env: lmdb.Environment, t: Tables, where: str,
                 on_map_full: Callable[[], bool], *, max_batch: int | None = None,
                 fsync: bool = True) -> None:
        self._env = env
        self._env_fsync = EnvFsync(env)  # rewrites every page after a failed fsync
        # False: never fsync (benchmarks, tests); every tier is then a tier-2 record.
        self._fsync = fsync
        self._t = t
        self._where = where
        # Called on the trio thread after MapFullError; returns False when it cannot grow.
        self._on_map_full = on_map_full
        # None: unbounded batches. 1: one transaction per operation (benchmarks compare).
        self._max_batch = max_batch
        # Guards _batches, _running and the batches' `ops` and `state` (both threads).
        self._lock = threading.Lock()
        self._batches: deque[_Batch] = deque()
        self._running = False  # a writer runs, or a map growth is under way
        self._threads = threading.Condition(self._lock)  # notified when _nthreads drops
        # Notified when a lingering batch should be taken now (it filled, or hurries).
        self._linger = threading.Condition(self._lock)
        self._nthreads = 0  # writer threads started and not yet ended
        #: fsyncs committed tier-1 batches in a thread of its own (journal.syncer)
        self._syncer: Syncer[_Batch] = Syncer(
            self.sync_now, lambda batches, err: self._post(self._synced, batches, err), where)
        # One fsync at a time (the syncer's, the background sync's, quiesce's): each
        # then accounts for exactly the commits that preceded it (`unsynced`).
        self._sync_lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self.batches = 0
        self.ops = 0
        #: operations queued, not yet taken by a writer (guarded by _lock)
        self.queued = 0
        #: tier-2 records whose callers stopped waiting, not yet committed (trio thread)
        self.held = 0
        #: held records lost because their batch failed (trio thread)
        self.held_lost = 0
        #: non-durable commits since the last fsync (the writer adds, a sync subtracts)
        self.unsynced = 0
        self.fsyncs = 0
        self.refused = 0
        #: transactions committed (the watermark advances only when this moved)
        self.commits = 0
        #: called in the writer thread with each committed transaction's id and operations
        #: (journal.inflight: the creates' intents in flight, and the witness on a tmpfs)
        self.on_commit: Callable[[int, list[Any]], None] | None = None

    # --- the trio side ----------------------------------------------------------------------

    async def submit(self, fn: Callable[[Txn], T], *, durable: bool = True,
                     linger: bool = False) -> T:
        """Run `fn(txn)` in a write transaction shared with concurrent callers; with
        `durable`, return only once it is fsynced. `linger`: the transaction may wait
        a few milliseconds for more operations (module docstring)."""
        op: _Op[T] = _Op(fn, durable)
        await self._wait(op, durable, hold=False, linger=linger and not durable)
        result: T = op.result
        return result

    async def submit_defer(self, prepared: PreparedDefer, *, durable: bool = True,
                           hold: bool = False) -> int:
        """Store a prepared defer; its seq (normally `prepared.seq`). `hold`: a
        cancelled caller leaves the record queued (tier 3, module docstring)."""
        await self._wait(prepared, durable, hold=hold and not durable)
        return prepared.result

    async def submit_defer_unsynced(self, prepared: PreparedDefer) -> tuple[int, Unsynced]:
        """A tier-1 defer that returns once COMMITTED, its fsync still under way (the
        batch is fsynced as any tier-1 batch): the caller awaits `Unsynced.wait()`
        before what the record must precede. An existing file's write intent must be
        durable before its content changes, not before its open returns (issue 16)."""
        batch = await self._wait(prepared, True, hold=False, sync=False)
        return prepared.result, Unsynced(batch, self.sync_now,
                                         lambda err: translate(err, self._where))

    def submit_soon(self, op: PreparedDefer | _Op[Any], *, linger: bool = False) -> None:
        """Queue `op` (a create's intent, journal.inflight; a close scan's completion behind
        it) and return at once: tier 2, nobody waits. `op.on_done(error or None)` runs on
        the trio thread once its transaction committed or failed. Queued in order: a
        write submitted later lands in the same transaction or a later one. `linger`:
        its batch may wait for more (module docstring), so that a create's intent and
        its close scan's completion share one transaction."""
        with self._lock:
            self.queued += 1
            batch = self._open_batch()
            batch.ops.append(op)
            if not linger:
                batch.hurry = True
            if len(batch.ops) == 1 or not linger or len(batch.ops) >= LINGER_OPS:
                self._linger.notify()
            start = not self._running
            self._running = True
        if start:
            self._start_writer()

    def submit_fn_soon(self, fn: Callable[[Txn], object],
                       on_done: Callable[[JournalError | None], None], *,
                       linger: bool = False) -> bool:
        """`submit_soon` for a function of the write transaction (tier 2); False, and
        nothing queued, when `MAX_QUEUED` operations already wait."""
        if self.queued >= MAX_QUEUED:
            return False
        op: _Op[object] = _Op(fn, durable=False)
        op.on_done = on_done
        self.submit_soon(op, linger=linger)
        return True

    def _open_batch(self) -> _Batch:
        # With _lock held: the newest pending batch, if it has room, else a new one.
        batches = self._batches
        if batches and (self._max_batch is None or len(batches[-1].ops) < self._max_batch):
            return batches[-1]
        batch = _Batch()
        batches.append(batch)
        return batch

    async def _wait(self, op: Any, durable: bool, *, hold: bool, linger: bool = False,
                    sync: bool = True) -> _Batch:
        with self._lock:
            if not durable and self.queued >= MAX_QUEUED:
                self.refused += 1
                raise JournalFull(f"journal {self._where}: {self.queued} records wait for "
                                  "the state disk, which takes no writes; nothing was written")
            self.queued += 1
            batch = self._open_batch()
            batch.ops.append(op)
            batch.durable = batch.durable or durable
            if not linger:
                batch.hurry = True
            if len(batch.ops) == 1 or not linger or len(batch.ops) >= LINGER_OPS:
                self._linger.notify()  # a writer waiting for a batch, or for this one
            start = not self._running
            if start:
                self._running = True
        if start:
            if not durable:
                # Let operations made in this same scheduling round (a drain's
                # completions, a reader's next record) join this transaction: one
                # writer-thread hand-off for all of them. Shielded and bounded: the
                # writer must start even if this caller is cancelled meanwhile.
                with trio.CancelScope(shield=True):
                    await trio.lowlevel.checkpoint()
            self._start_writer()
        try:
            # A tier-1 caller waits for the fsync (unless it awaits it later: `sync`
            # False, journal.syncer.Unsynced), a tier-2 caller only for the commit.
            await (batch.synced if durable and sync and self._fsync else batch.event).wait()
        except BaseException:
            with self._lock:
                if batch.state == _PENDING and not hold:
                    batch.ops.remove(op)
                    self.queued -= 1
                elif hold and batch.state != _DONE:
                    op.held = True  # written when the disk takes it (_finish counts it)
                    self.held += 1
            raise
        failure = batch.error or (batch.sync_error if durable and sync else None)
        if failure is not None:
            raise translate(failure, self._where)
        return batch

    def _start_writer(self) -> None:
        # Called with _running set by the caller; on the trio thread.
        self._token = trio.lowlevel.current_trio_token()
        with self._lock:
            self._nthreads += 1
        trio.lowlevel.start_thread_soon(self._writer, self._writer_ended, name="journal writer")

    def _finish(self, batch: _Batch) -> None:
        # On the trio thread: committed (or failed). Twice is once.
        if batch.state == _DONE:
            return
        batch.state = _DONE
        for op in batch.ops:
            if op.held:
                op.held = False
                self.held -= 1
                if batch.error is not None:
                    self.held_lost += 1
            if op.on_done is not None:  # nobody waits on the event for it (submit_soon)
                op.on_done(None if batch.error is None
                           else translate(batch.error, self._where))
        batch.event.set()
        if not (batch.durable and self._fsync) or batch.error is not None:
            batch.synced.set()

    def _synced(self, batches: list[_Batch], error: BaseException | None) -> None:
        # On the trio thread: the fsync after these batches' commits returned.
        for batch in batches:
            self._finish(batch)  # (the writer may not have said so yet: pipelining)
            batch.sync_error = error
            batch.synced.set()

    def _regrow(self, batch: _Batch, err: BaseException) -> None:
        # On the trio thread; no writer runs (_running is still set, so none starts).
        try:
            if isinstance(err, lmdb.MapResizedError):
                self._env.set_mapsize(0)  # another process grew the map: adopt its size
            elif not self._on_map_full():
                raise err
        except Exception as failure:
            log_failure(self._where, len(batch.ops), failure)
            batch.error = failure
            self._finish(batch)
        else:
            with self._lock:
                self._batches.appendleft(batch)
                self.queued += len(batch.ops)
        with self._lock:
            if not self._batches:
                self._running = False
                return
        self._start_writer()

    def _writer_ended(self, result: outcome.Outcome[None]) -> None:
        # In the writer thread, after `_writer` returned.
        with self._lock:
            self._nthreads -= 1
            self._threads.notify_all()
        try:
            result.unwrap()
        except BaseException as err:  # a bug: never leave callers waiting forever
            log.critical("journal %r: writer thread died: %r", self._where, err)
            with self._lock:
                stranded = list(self._batches)
                self._batches.clear()
                self.queued = 0
                self._running = False
            for b in stranded:
                b.error = JournalError(f"journal {self._where}: writer died: {err!r}")
                self._post(self._finish, b)

    def _post(self, fn: Callable[..., object], *args: Any) -> None:
        token = self._token
        assert token is not None
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            log.warning("journal %r: trio run finished; a batch result was dropped",
                        self._where)

    def rewrite_before_next_fsync(self) -> None:
        """The last run stopped uncleanly: it may have died after a failed fsync, knowing
        (in memory only) that pages Linux marked clean never reached the disk."""
        self._env_fsync.rewrite_due = True

    def sync_now(self) -> None:
        """fsync the environment (blocking; in a thread). Concurrent commits are fine:
        LMDB's env sync is an fdatasync of the data file, it takes no lock."""
        with self._sync_lock:
            with self._lock:
                before = self.unsynced
            self._env_fsync()
            with self._lock:
                self.fsyncs += 1
                self.unsynced -= before

    def wait_idle(self, timeout: float) -> bool:
        """Wait (blocking) until no writer thread runs; for close()."""
        end = time.monotonic() + timeout
        with self._lock:
            idle = self._threads.wait_for(lambda: self._nthreads == 0, timeout)
        return idle and self._syncer.wait_idle(max(0.0, end - time.monotonic()))

    # --- the writer thread ------------------------------------------------------------------

    def _writer(self) -> None:
        done: _Batch | None = None  # committed, its callers not yet told
        while True:
            with self._lock:
                if not self._batches or self._batches[0].lingers(time.monotonic()):
                    if done is not None:  # its callers must not wait for more
                        self._post(self._finish, done)
                        done = None
                    # Stay a moment for the next batch: the drain's next completions come
                    # within milliseconds, and a thread start per batch cost more than
                    # this wait (module docstring, "Lingering").
                    idle_until = time.monotonic() + WRITER_KEEP_S
                    while not self._batches and (now := time.monotonic()) < idle_until:
                        self._linger.wait(idle_until - now)
                    while self._batches and self._batches[0].lingers(now := time.monotonic()):
                        self._linger.wait(self._batches[0].born + LINGER_S - now)
                batch = self._batches.popleft() if self._batches else None
                if batch is None:
                    self._running = False
                else:
                    batch.state = _TAKEN
                    self.queued -= len(batch.ops)
            if batch is None:
                if done is not None:
                    self._post(self._finish, done)
                return
            try:
                self._run_batch(batch, done)  # tells the trio thread about `done`
            except _NeedsGrowth as grow:
                self._post(self._regrow, batch, grow.args[0])
                return
            except Exception as err:  # every caller of the batch gets the failure
                log_failure(self._where, len(batch.ops), err)
                batch.error = err
                for op in batch.ops:  # not stored: a completion queued behind it sees 0
                    if type(op) is PreparedDefer:
                        op.result = 0
            self.batches += 1
            self.ops += len(batch.ops)
            done = batch

    def _run_batch(self, batch: _Batch, done: _Batch | None) -> None:
        """One transaction for `batch`; tells the trio thread `done` is durable as soon
        as the operations are applied (before this commit's fsync), or on failure."""
        try:
            txn = self._env.begin(write=True)
            try:
                w = BatchWriter(txn, self._t)
                for op in batch.ops:
                    if type(op) is PreparedDefer:
                        op.result = w.defer(op)
                    else:
                        op.result = op.fn(txn)
                w.finish()
                del w
            except BaseException:
                txn.abort()
                raise
            if done is not None:
                self._post(self._finish, done)
                done = None
            txn.commit()
            self.commits += 1
            if self.on_commit is not None:
                # The id the journal holds now, not txn.id(): a transaction that changed
                # nothing (a drain's claim that found nothing) commits without taking its
                # id, and a witness ahead of the journal reads as lost commits (a walk).
                self.on_commit(int(self._env.info()["last_txnid"]), batch.ops)
            if batch.durable and self._fsync:
                # Tier 1: its callers wake after an fsync, in the syncer; this thread
                # goes on with the next batch meanwhile (module docstring).
                self._syncer.add(batch)
            else:
                with self._lock:
                    self.unsynced += 1
        except (lmdb.MapFullError, lmdb.MapResizedError) as err:
            raise _NeedsGrowth(err) from None
        finally:
            if done is not None:
                self._post(self._finish, done)
