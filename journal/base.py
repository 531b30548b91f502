"""The journal's base: opening, closing and the plumbing of one LMDB environment.

`Journal` (journal.store) is the face every caller uses; this is the part that
owns the environment, the group committer, the witness and the creates'
intents in flight (journal.inflight), and runs reads and writes for it. Split
from journal.store along that seam (one module, one reading).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

import lmdb
import trio

from vfile.journal import tables, taint, watermark
from vfile.journal.commit import MAX_MAP_SIZE, GroupCommitter
from vfile.journal.environment import open_env
from vfile.journal.inflight import InFlight
from vfile.journal.records import JournalError, JournalUnreadable
from vfile.journal.sourcesync import SourceSync
from vfile.journal.tables import Txn

log = logging.getLogger("vfile.journal.store")

T = TypeVar("T")
DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_ATTEMPTS = 10
#: how long a clean close waits for the source's sync before it gives up the clean mark
CLOSE_SOURCE_SYNC_S = 10.0

class JournalBase:
    """A journal's environment, its opening and closing, and the plumbing of reads and
    writes; `Journal` (journal.store) adds the operations."""

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
        #: the table was seen empty with no taint write of ours under way since: a read
        #: per create and per cache-missing open saved (`Journal.get_taint`)
        self._untainted = False
        self._taint_writes = 0  # put/clear_taint submitted, not returned yet
        self._taint_ticket = 0  # taint writes submitted, ever
        #: the last taint write whose caller left before it returned (cancelled, failed):
        #: it may still be committed later, until a taint write submitted after it returns
        #: (the committer keeps their order); 0: none in doubt
        self._taint_doubt = 0
        #: journal.watermark: what the witness saw before this open, the transaction the
        #: journal held at open, and the witness this process keeps (None: no lock dir)
        self._seen: watermark.Seen | None = None
        self._opened_txnid = int(env.info()["last_txnid"])
        self._witness: watermark.Witness | None = None
        #: creates' intents queued and not yet committed (journal.inflight)
        self.inflight = InFlight(self._opened_txnid)
        self._committer.on_commit = self.inflight.committed
        self._running = False  # begin_run was called: close() marks the stop clean
        #: when begin_run was called (the clock's time): leases from before are over
        self._run_started: float | None = None
        #: begin_run found a recovery walk due and no `vouch` said it is done: a stop now
        #: (the walk failed: a full state disk, an I/O error) is not clean, or the next
        #: start would skip the walk and the files it had not reached (s26,
        #: tests/t4_input26_test.py)
        self._walk_due = False
        #: an offline writer (`vfile journal purge`) opened a cleanly stopped journal:
        #: close() marks it clean again if it committed (the marker names the last
        #: transaction, journal.watermark.stopped_cleanly)
        self._clean_at_open = False
        self._commits_at_watermark = -1
        self._watermark: int | None = None  # as stored, once begin_run read it
        #: the source's syncfs (journal.sourcesync), given by the mount: W waits for it
        self.source_sync: SourceSync | None = None
        #: journal.torn: this journal replaced one a power loss tore (what was salvaged)
        self.rebuilt: dict[str, object] | None = None

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, sync: bool = True,
             readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE,
             max_attempts: int = DEFAULT_MAX_ATTEMPTS,
             clock: Callable[[], float] = time.time, group_commit: bool = True,
             lock_dir: str | os.PathLike[str] | None = None) -> Self:
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
            journal._committer.on_commit = journal.inflight.committed
        if not readonly:
            journal._keep_witness(where, lock_dir)
        return journal

    def _keep_witness(self, where: Path, lock_dir: str | os.PathLike[str] | None) -> None:
        # Followed only once a mount vouches (Journal.vouch): a `vfile journal` edit
        # beside a live mount must not rewrite it (watermark.open_witness).
        run = self._read(lambda txn: watermark.read_state(txn, self._t))[0]
        self._clean_at_open = watermark.stopped_cleanly(run, self._opened_txnid)
        self._seen, self._witness, _ = watermark.open_witness(
            watermark.witness_for(where, lock_dir), self._opened_txnid, run)

    @classmethod
    def _open(cls, where: Path, *, sync: bool, readonly: bool, map_size: int,
              max_attempts: int, clock: Callable[[], float],
              lock_dir: Path | None) -> Self:
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
            if self.inflight:  # an intent no retry committed: the next start walks
                log.error("journal %s: %d creates' intents not committed: the stop is not "
                          "recorded as clean", self.path, len(self.inflight))
            elif self._running and self._walk_due:
                log.error("journal %s: the recovery walk did not finish: the stop is not "
                          "recorded as clean (the next start walks again)", self.path)
            elif self._running and idle and self._fsync and not self._source_synced():
                log.error("journal %s: the source's sync did not return: the stop is not "
                          "recorded as clean (the next start walks)", self.path)
            elif (self._running or (self._clean_at_open and int(
                    self._env.info()["last_txnid"]) != self._opened_txnid)) \
                    and idle and self._fsync:
                try:  # everything is synced above
                    watermark.mark_clean(self._env, self._t)
                except lmdb.Error as err:
                    log.error("journal %s: cannot record the clean stop: %s", self.path, err)
            if self._witness is not None:
                self._witness.close()
            self._env.close()

    def _source_synced(self) -> bool:
        """A clean stop means no walk at the next start: the source's data the verdicts
        judged must be on its disk first (journal.sourcesync)."""
        s = self.source_sync
        return s is None or s.sync_blocking(CLOSE_SOURCE_SYNC_S)

    def __enter__(self) -> Self:
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

    def _write_soon(self, fn: Callable[[Txn], object]) -> bool:
        """A tier-2 write queued, not waited for (its failure logged); False, nothing
        queued, when the committer's queue is full."""
        def done(err: JournalError | None) -> None:
            if err is not None:
                log.warning("journal: a queued write failed: %s", err)
        return self._committer.submit_fn_soon(fn, done, linger=True)

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

