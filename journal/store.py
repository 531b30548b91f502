"""The journal: one LMDB environment per mount, in a state directory; `Journal`
is the face every caller uses.

Opening, checking and creating the environment is environment.py (a journal
we refuse to open is never modified; a new one is created atomically); the
operations inside a transaction are tables.py and the modules beside it;
reports that read many records are reads.py.

Invariants:
- Writes go through the group committer (commit.py). A write returns once
  its transaction is committed; tier-1 writes (content-change records,
  renames, quarantine, administrator edits) only once it is also fsynced;
  tier-2 writes (unscanned-read records, verdicts, drain bookkeeping) are
  fsynced by `sync_if_dirty` within the mount's `sync_interval`, and at
  quiesce, resume and close. See README "Durability of journal records".
- Reads are synchronous on the calling (trio) thread: an LMDB read is
  microseconds, cheaper than a thread hop, and it keeps the writer thread the
  only other user of the env.
- An environment is never used across fork(): every call checks the pid.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import lmdb
import trio

from vfile.journal import (
    check,
    exposed,
    names,
    ops,
    queue,
    reads,
    tables,
    taint,
    verdicts,
    watermark,
)
from vfile.journal.commit import MAX_MAP_SIZE, GroupCommitter
from vfile.journal.environment import open_env
from vfile.journal.records import (
    DeferredEntry,
    Exposure,
    ExposureRecord,
    Identity,
    JournalError,
    JournalUnreadable,
    QuarantineRecord,
    Reason,
    VerdictRecord,
    decode_quarantine,
)
from vfile.journal.tables import Txn

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_ATTEMPTS = 10


class Journal:
    """Deferred scans, verdicts and quarantine records of one mount."""

    def __init__(self, env: lmdb.Environment, t: tables.Tables, where: Path, *,
                 readonly: bool, max_attempts: int, clock: Callable[[], float],
                 fsync: bool = True) -> None:
        self._env = env
        self._t = t
        self.path = where
        self.readonly = readonly
        self.max_attempts = max_attempts
        self._clock = clock
        self._pid = os.getpid()
        self._fsync = fsync
        self._committer = GroupCommitter(env, t, str(where), self._grow_map, fsync=fsync)
        self._sync_limiter = trio.CapacityLimiter(1)
        #: verdicts this process deleted (`delete_verdicts`), for status and metrics
        self.verdicts_collected = 0
        #: the `tainted` table (journal.taint); None in a read-only journal without one
        self._taint_db = taint.open_taint_table(env, readonly=readonly)
        #: journal.watermark: what the witness saw before this open, the transaction the
        #: journal held at open, and the witness this process keeps (None: no lock dir)
        self._seen: watermark.Seen | None = None
        self._opened_txnid = int(env.info()["last_txnid"])
        self._witness: watermark.Witness | None = None
        self._running = False  # begin_run was called: close() marks the stop clean
        self._commits_at_watermark = -1
        self._watermark: int | None = None  # as stored, once begin_run read it

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, sync: bool = True,
             readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE,
             max_attempts: int = DEFAULT_MAX_ATTEMPTS,
             clock: Callable[[], float] = time.time, group_commit: bool = True,
             lock_dir: str | os.PathLike[str] | None = None) -> Journal:
        """Open (creating if missing, unless `readonly`) the journal in `state_dir`.

        `sync=False` never fsyncs (benchmarks and tests only: tier-1 records then
        survive a process crash but not a power loss). `group_commit=False` runs
        one transaction per operation (for comparison). `lock_dir`: keep LMDB's
        lock file there (a tmpfs), see `place_lock`.
        """
        where = Path(state_dir)
        try:
            journal = cls._open(where, sync=sync, readonly=readonly, map_size=map_size,
                                max_attempts=max_attempts, clock=clock,
                                lock_dir=None if lock_dir is None else Path(lock_dir))
        except PermissionError:
            raise JournalUnreadable(f"{where}: permission denied") from None
        except lmdb.Error as err:
            raise JournalError(f"{where}: cannot open journal: {err}") from None
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise JournalError(f"{where}: disk full, cannot create journal") from None
            raise JournalUnreadable(f"{where}: {err.strerror or err}") from None
        if not group_commit:
            journal._committer = GroupCommitter(journal._env, journal._t, str(where),
                                                journal._grow_map, max_batch=1, fsync=sync)
        if not readonly:
            journal._keep_witness(where, lock_dir)
        return journal

    def _keep_witness(self, where: Path, lock_dir: str | os.PathLike[str] | None) -> None:
        run = self._read(lambda txn: watermark.read_state(txn, self._t))[0]
        self._seen, self._witness, vouches = watermark.open_witness(
            watermark.witness_for(where, lock_dir), self._opened_txnid, run)
        if self._witness is not None and vouches:
            self._committer.on_commit = self._witness.record

    @classmethod
    def _open(cls, where: Path, *, sync: bool, readonly: bool, map_size: int,
              max_attempts: int, clock: Callable[[], float],
              lock_dir: Path | None) -> Journal:
        env, t = open_env(where, readonly=readonly, map_size=map_size, lock_dir=lock_dir)
        return cls(env, t, where, readonly=readonly, max_attempts=max_attempts, clock=clock,
                   fsync=sync)

    def close(self) -> None:
        if self._pid == os.getpid():
            # A waiter cancelled mid-batch may leave its writer finishing: let it commit.
            if not (idle := self._committer.wait_idle(30.0)):
                log.error("journal %s: closing while a write transaction still runs", self.path)
            if not self.readonly and self._fsync and self._committer.unsynced:
                try:
                    self._committer.sync_now()  # tier-2 records: durable at unmount
                except lmdb.Error as err:
                    log.error("journal %s: final sync failed: %s", self.path, err)
                    idle = False
            if self._running and idle and self._fsync:
                try:  # everything is synced above
                    watermark.mark_clean(self._env, self._t)
                except lmdb.Error as err:
                    log.error("journal %s: cannot record the clean stop: %s", self.path, err)
            if self._witness is not None:
                self._witness.close()
            self._env.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------

    def _check(self) -> None:
        if os.getpid() != self._pid:
            raise JournalError(f"{self.path}: journal used across fork(); open it in the child")

    def _grow_map(self) -> bool:
        size = int(self._env.info()["map_size"])
        if size * 2 > MAX_MAP_SIZE:
            return False
        log.info("journal %s: map full, growing it to %d MiB", self.path, size * 2 >> 20)
        self._env.set_mapsize(size * 2)
        return True

    def _check_writable(self) -> None:
        self._check()
        if self.readonly:
            raise JournalError(f"{self.path}: journal opened read-only")

    async def _write(self, fn: Callable[[Txn], T], *, durable: bool = True,
                     linger: bool = False) -> T:
        self._check_writable()
        return await self._committer.submit(fn, durable=durable, linger=linger)

    def _read(self, fn: Callable[[Txn], T]) -> T:
        self._check()
        for _ in range(2):
            try:
                with self._env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and read again.
                self._env.set_mapsize(0)
        raise JournalError(f"{self.path}: map keeps being resized")

    # --- writes ------------------------------------------------------------------------------

    async def defer(self, path: str, identity: Identity | None, reason: Reason, profile: str,
                    *, exposure: Exposure | None = None, error: str = "",
                    durable: bool = True, hold: bool = False) -> int:
        """Record that `path` needs a scan. `durable` (tier 1): fsynced before this
        returns; otherwise (tier 2) committed, fsynced within the sync interval.
        `hold` (tier 2 only): if the caller is cancelled (its deadline passed), the
        record stays queued in memory and is written when the disk takes it."""
        self._check_writable()
        # Seq, keys and value are made here, on the trio thread: the writer thread
        # then mostly just puts them (see ops.BatchWriter).
        return await self._committer.submit_defer(ops.PreparedDefer(
            self._t, path, identity=identity, reason=reason, profile=profile,
            exposure=exposure, error=error, now=self._clock()), durable=durable, hold=hold)

    # Resolving, verdicts and the drain's bookkeeping are tier 2: losing them to a
    # power loss only means a file is scanned again (README "Durability").

    async def complete(self, path: str, seq: int, verdict: VerdictRecord | None, *,
                       linger: bool = False) -> bool:
        """Remove entry `seq` of `path` and store `verdict`, in one transaction.
        `linger`: the drain's, which may wait a few ms to share it (journal.commit)."""
        t, now = self._t, self._clock()
        return await self._write(lambda txn: ops.op_complete(txn, t, path, seq, verdict,
                                                                now), durable=False,
                                 linger=linger)

    async def put_verdict(self, verdict: VerdictRecord) -> None:
        t = self._t
        await self._write(lambda txn: verdicts.op_put_verdict(txn, t, verdict), durable=False)

    async def claim(self, n: int, *, lease: float) -> list[DeferredEntry]:
        now, t = self._clock(), self._t
        return await self._write(lambda txn: queue.op_claim(txn, t, n, lease, now),
                                 durable=False)

    async def release(self, path: str, seq: int, error: str, *, poison: bool = False) -> None:
        """A failed attempt (with back-off, poisoned after `max_attempts`); `poison`:
        the entry cannot be scanned at all (its reason in `error`), poisoned now."""
        now, t, limit = self._clock(), self._t, 1 if poison else self.max_attempts
        if await self._write(lambda txn: queue.op_release(
            txn, t, path=path, seq=seq, error=error, now=now, max_attempts=limit),
                durable=False, linger=True):
            if poison:
                log.warning("journal: %r cannot be scanned: %s", path, error)
            else:
                log.warning("journal: %r poisoned after %d failed scan attempts: %s",
                            path, limit, error)

    async def retry(self, path: str | None = None) -> int:
        t = self._t
        return await self._write(lambda txn: queue.op_retry(txn, t, path))

    async def purge(self, path: str | None = None, *, poisoned_only: bool = False) -> int:
        t = self._t
        return await self._write(lambda txn: queue.op_purge(txn, t, path, poisoned_only))

    async def forget_path(self, path: str, outcome: str = "unlinked") -> DeferredEntry | None:
        """Drop the path's entry; its exposures are kept (`list_exposed`) as `outcome`.
        Tier 2: a forgotten unlink leaves an entry whose file is gone; the drain drops it."""
        t, now = self._t, self._clock()
        return await self._write(lambda txn: ops.op_forget(txn, t, path, outcome, now),
                                 durable=False)

    async def rename_path(self, old: str, new: str) -> None:
        t, now = self._t, self._clock()
        await self._write(lambda txn: ops.op_rename(txn, t, old, new, now))

    async def rename_tree(self, old_dir: str, new_dir: str) -> int:
        """A directory was renamed: entries below it follow (scans all entries)."""
        t, now = self._t, self._clock()
        return await self._write(lambda txn: ops.op_rename_tree(txn, t, old_dir, new_dir,
                                                                   now))

    async def keep_exposures(self, path: str, outcome: str) -> None:
        """Keep the exposures of `path`'s entry (`list_exposed`) as `outcome`; the entry
        stays."""
        t, now = self._t, self._clock()

        def op(txn: Txn) -> None:
            found = tables.find(txn, t, path)
            if found is not None:
                exposed.archive(txn, t, found[1], outcome, now=now)

        await self._write(op)

    async def delete_verdicts(self, keys: list[bytes]) -> int:
        """Delete verdicts by key (`verdict_batch`); one small write transaction."""
        t = self._t
        # Tier 2: a collection lost to a crash is only redone.
        n = await self._write(lambda txn: verdicts.op_delete_verdicts(txn, t, keys), durable=False)
        self.verdicts_collected += n
        return n

    async def clear_exposed(self, path: str | None = None) -> int:
        """An administrator clears kept exposure records (of `path`, or all)."""
        t = self._t
        return await self._write(lambda txn: exposed.op_clear_exposed(txn, t, path))

    async def relink_path(self, old: str, new: str) -> int | None:
        """Name `old` went while `new` still names the same file: its entry moves there
        (merged into `new`'s own); returns `new`'s seq, None if `old` had no entry."""
        t = self._t
        return await self._write(lambda txn: names.op_relink(txn, t, old, new))

    async def exchange(self, a: str, b: str) -> int:
        """`a` and `b` (files or directories) were exchanged: entries follow their files."""
        t = self._t
        return await self._write(lambda txn: names.op_exchange(txn, t, a, b))

    async def put_taint(self, rec: taint.TaintRecord) -> None:
        """Remember that inode (dev, ino) held infected content (journal.taint)."""
        db = self._taint_db
        await self._write(lambda txn: taint.op_put(txn, db, rec))

    async def clear_taint(self, dev: int, ino: int) -> bool:
        """A scan of the inode's current content said clean."""
        db = self._taint_db
        return await self._write(lambda txn: taint.op_clear(txn, db, dev, ino))

    def get_taint(self, dev: int, ino: int) -> taint.TaintRecord | None:
        db = self._taint_db
        if db is None:
            return None
        return self._read(lambda txn: taint.get(txn, db, dev, ino))

    async def add_quarantine(self, rec: QuarantineRecord) -> None:
        t = self._t
        await self._write(lambda txn: ops.op_add_quarantine(txn, t, rec))

    async def remove_quarantine(self, id: str) -> None:
        t = self._t
        await self._write(lambda txn: ops.op_remove_quarantine(txn, t, id))

    async def sync(self) -> None:
        """fsync now (quiesce), without holding up commits meanwhile."""
        self._check()
        await trio.to_thread.run_sync(self._committer.sync_now, limiter=self._sync_limiter)

    async def sync_if_dirty(self) -> bool:
        """fsync if a commit since the last fsync was not fsynced (tier-2 records).
        On a state disk that takes no writes this waits in a thread; cancelling the
        caller abandons the wait (the thread finishes when the disk thaws)."""
        self._check()
        if self.readonly or not self._fsync or not self._committer.unsynced:
            return False
        await trio.to_thread.run_sync(self._committer.sync_now, limiter=self._sync_limiter,
                                      abandon_on_cancel=True)
        return True

    async def serve_sync(self, interval: float, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Run `sync_if_dirty` every `interval` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                if self._running:
                    await self.advance_watermark()
                else:
                    await self.sync_if_dirty()
            except (lmdb.Error, JournalError) as err:
                log.error("journal %s: background sync failed: %s", self.path, err)

    # --- tier 1w: the watermark and the run marker (journal.watermark) ------------------------

    async def begin_run(self, source: bytes = b"") -> watermark.Recovery:
        """A mount of `source` (watermark.source_key) starts: the recovery rule's answer, then
        the run marker `running`, durably. A walk due for another source: JournalError."""
        t = self._t
        run, mark = self._read(lambda txn: watermark.read_state(txn, t))
        found = watermark.decide(run, mark, self._seen, watermark.boot_id(),
                                 self._opened_txnid)
        self._watermark = mark
        watermark.check_source(found, self._read(lambda txn: watermark.read_source(txn, t)),
                               source)
        marker = watermark.new_run_marker()
        await self._write(lambda txn: watermark.op_set_run(txn, t, marker, source))
        self._running = True
        if not found.walk:
            self.vouch()
        return found

    def vouch(self) -> None:
        """Every intent is in the journal (no walk was due, or it is done): the witness
        follows the commits again. Not before: a kill mid-walk must walk again."""
        if self._witness is not None:  # following this run, tagged with its marker
            self._witness.run = self._read(lambda txn: watermark.read_state(txn, self._t))[0] or b""
            self._witness.record(int(self._env.info()["last_txnid"]))
            self._committer.on_commit = self._witness.record

    async def advance_watermark(self) -> bool:
        """fsync, then raise the watermark durably to the clock read before that fsync
        minus the margin (journal.watermark); nothing if nothing was committed since."""
        self._check()
        c = self._committer
        if self.readonly or not self._fsync or (
                not c.unsynced and c.commits == self._commits_at_watermark):
            return False
        before = time.time_ns()  # CLOCK_REALTIME, the clock of the kernel's ctime
        await trio.to_thread.run_sync(c.sync_now, limiter=self._sync_limiter,
                                      abandon_on_cancel=True)
        t, ns = self._t, before - watermark.MARGIN_NS
        self._watermark = await self._write(lambda txn: watermark.op_advance(txn, t, ns))
        self._commits_at_watermark = c.commits
        return True

    def new_files_covered(self) -> bool:
        """A create's intent may be tier 1w now (watermark.covers_new_files)."""
        return watermark.covers_new_files(self._watermark, time.time_ns())

    def watermark_ns(self) -> int | None:
        return self._read(lambda txn: watermark.read_state(txn, self._t))[1]

    def durability(self) -> dict[str, int]:
        """The group committer's counters: the durability tiers (README "Durability of
        journal records") and the batching (`ops` written in `batches` transactions)."""
        c = self._committer
        return {"unsynced_commits": c.unsynced, "fsyncs": c.fsyncs, "queued": c.queued,
                "held_in_memory": c.held, "held_lost": c.held_lost, "refused": c.refused,
                "batches": c.batches, "ops": c.ops}

    # --- reads -------------------------------------------------------------------------------

    def get_verdict(self, identity: Identity, sig_version: str) -> VerdictRecord | None:
        t = self._t
        return self._read(lambda txn: verdicts.get_verdict(txn, t, identity, sig_version))

    def get_deferred(self, path: str) -> DeferredEntry | None:
        t = self._t
        found = self._read(lambda txn: tables.find(txn, t, path))
        return None if found is None else found[1]

    def list_deferred(self, *, limit: int | None = None,
                      include_poisoned: bool = True) -> list[DeferredEntry]:
        """Deferred entries, oldest first; `limit` N costs O(N log profiles)."""
        t = self._t
        return self._read(lambda txn: reads.list_deferred(txn, t, limit, include_poisoned))

    def profile_debts(self) -> dict[str, tuple[int, int, float]]:
        """Per profile with entries: (entries, bytes, age of the oldest in s), from the
        counters and one index lookup per profile: no walk (the quota's measure)."""
        t, now = self._t, self._clock()
        return self._read(lambda txn: reads.profile_debts(txn, t, now))

    def list_quarantine(self) -> list[QuarantineRecord]:
        t = self._t
        return sorted(self._read(lambda txn: reads.list_quarantine(txn, t)), key=lambda r: r.time)

    def verdict_batch(self, after: bytes | None,
                      n: int) -> list[tuple[bytes, VerdictRecord | None]]:
        """Up to `n` verdicts (key, record or None if undecodable) after key `after`."""
        t = self._t
        return self._read(lambda txn: verdicts.verdict_batch(txn, t, after, n))

    def verdicts(self) -> list[VerdictRecord]:
        """Every stored verdict, in key order: an audit read, O(verdicts), for tests
        and diagnosis (the gate reads one with `get_verdict`, the collector in
        batches). An undecodable record raises JournalCorrupt."""
        t = self._t
        return self._read(lambda txn: verdicts.all_verdicts(txn, t))

    def check(self) -> list[str]:
        """The journal's invariants checked (check.py): each broken one, named; empty
        when consistent. O(entries)."""
        t = self._t
        return self._read(lambda txn: check.problems(txn, t))

    def list_exposed(self) -> list[ExposureRecord]:
        """Exposure records kept after their entries ended, oldest first."""
        t = self._t
        return sorted(self._read(lambda txn: exposed.list_exposed(txn, t)), key=lambda r: r.first)

    def get_quarantine(self, id: str) -> QuarantineRecord | None:
        t = self._t
        raw = self._read(lambda txn: txn.get(id.encode("utf-8", "surrogateescape"),
                                             db=t.quarantine))
        return None if raw is None else decode_quarantine(raw)

    def contents(self) -> dict[str, object]:
        """What the journal holds (counts, oldest age, bytes) and its map use: status,
        `vfile journal stats`, metrics. The committer's counters are `durability`."""
        t, now = self._t, self._clock()
        out = self._read(lambda txn: reads.contents(txn, t, now))
        info = self._env.info()
        stat = self._env.stat()
        out["map_size"] = int(info["map_size"])
        out["map_used"] = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        out["path"] = str(self.path)
        out["verdicts_collected"] = self.verdicts_collected
        return out
