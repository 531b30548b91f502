"""The journal: one LMDB environment per mount, in a state directory.

Invariants:
- A journal we refuse to open is never modified: an existing `data.mdb` is
  first checked through a read-only, lock-free environment (magic, format
  version); only then is it opened for writing. An unreadable, corrupted,
  foreign or newer journal raises a `JournalError` subclass naming the path.
- A new journal is created atomically: built and synced in a private
  sub-directory, then its `data.mdb` renamed into place. A crash during
  creation leaves either no journal or a complete one, never an LMDB
  environment without vfile's magic (which would then look foreign).
- Writes go through the group committer (commit.py): every async write
  method returns only once its transaction is durable. Reads are synchronous
  on the calling (trio) thread: an LMDB read is microseconds, cheaper than a
  thread hop, and it keeps the writer thread the only other user of the env.
- An environment is never used across fork(): every call checks the pid.

What the LMDB durability options trade (all on by default, `sync=False` turns
both `sync` and `metasync` off):
- `sync`: fsync the data file at each commit. Off: a commit is only in the
  page cache; an OS crash or power loss can lose the last transactions (LMDB
  stays consistent, it rolls back to an older meta page). A process crash
  (SIGKILL) loses nothing either way: the pages are in the kernel.
- `metasync`: fsync again after writing the meta page. Off: the last commit
  can be lost on OS crash, but the database stays consistent.
- `map_async` (only with `writemap`): flush asynchronously; as `sync=False`
  for durability. Not used.
- `writemap`: write through a writable mmap instead of pwrite. Faster, but a
  stray pointer write in this process could corrupt the database, and the
  file is preallocated to the full map size. Not used.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from journal import names, queue, tables, taint
from journal.commit import MAX_MAP_SIZE, GroupCommitter
from journal.records import (
    DeferredEntry,
    Exposure,
    Identity,
    JournalCorrupt,
    JournalError,
    JournalForeign,
    JournalTooNew,
    JournalUnreadable,
    QuarantineRecord,
    Reason,
    VerdictRecord,
    decode_quarantine,
)
from journal.tables import Txn

log = logging.getLogger(__name__)

T = TypeVar("T")
DATA_FILE = "data.mdb"
DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_ATTEMPTS = 10


def _check_meta(txn: Txn, env: lmdb.Environment, where: Path) -> None:
    try:
        meta = env.open_db(b"meta", txn=txn, create=False)
    except lmdb.NotFoundError:
        raise JournalForeign(f"{where}: an LMDB environment, but not a vfile journal") from None
    if txn.get(b"magic", db=meta) != tables.MAGIC:
        raise JournalForeign(f"{where}: an LMDB environment, but not a vfile journal")
    raw = txn.get(b"format", db=meta) or b""
    try:
        fmt = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise JournalCorrupt(f"{where}: journal format version {raw!r} is unreadable") from None
    if fmt > tables.JOURNAL_FORMAT:
        raise JournalTooNew(f"{where}: journal format {fmt} is newer than this vfile "
                            f"understands ({tables.JOURNAL_FORMAT}); upgrade vfile")


def probe(state_dir: Path) -> None:
    """Check an existing journal without changing a byte of it (no lock file either)."""
    data = state_dir / DATA_FILE
    try:
        fd = os.open(data, os.O_RDONLY)
        os.close(fd)
    except PermissionError:
        raise JournalUnreadable(f"{data}: permission denied") from None
    except OSError as err:
        raise JournalUnreadable(f"{data}: {err.strerror}") from None
    try:
        env = lmdb.open(str(state_dir), readonly=True, lock=False, create=False,
                        max_dbs=tables.MAX_DBS, subdir=True)
    except lmdb.Error as err:
        raise JournalCorrupt(f"{data}: not a readable LMDB environment ({err})") from None
    try:
        with env.begin() as txn:
            _check_meta(txn, env, state_dir)
    except lmdb.Error as err:
        raise JournalCorrupt(f"{data}: damaged LMDB environment ({err})") from None
    finally:
        env.close()


def _create(state_dir: Path, map_size: int) -> None:
    tmp = state_dir / f".init-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    env = lmdb.open(str(tmp), map_size=map_size, max_dbs=tables.MAX_DBS, mode=0o600)
    try:
        with env.begin(write=True) as txn:
            t = tables.open_tables(env, txn)
            tables.init_meta(txn, t)
        env.sync(True)
    finally:
        env.close()
    os.rename(tmp / DATA_FILE, state_dir / DATA_FILE)
    shutil.rmtree(tmp, ignore_errors=True)
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Journal:
    """Deferred scans, verdicts and quarantine records of one mount."""

    def __init__(self, env: lmdb.Environment, t: tables.Tables, where: Path, *,
                 readonly: bool, max_attempts: int, clock: Callable[[], float]) -> None:
        self._env = env
        self._t = t
        self.path = where
        self.readonly = readonly
        self.max_attempts = max_attempts
        self._clock = clock
        self._pid = os.getpid()
        self._committer = GroupCommitter(env, t, str(where), self._grow_map)
        #: the `tainted` table (journal.taint); None in a read-only journal without one
        self._taint_db = taint.open_taint_table(env, readonly=readonly)

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, sync: bool = True,
             readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE,
             max_attempts: int = DEFAULT_MAX_ATTEMPTS,
             clock: Callable[[], float] = time.time, group_commit: bool = True) -> Journal:
        """Open (creating if missing, unless `readonly`) the journal in `state_dir`.

        `group_commit=False` runs one transaction per operation (for comparison).
        """
        where = Path(state_dir)
        try:
            journal = cls._open(where, sync=sync, readonly=readonly, map_size=map_size,
                                max_attempts=max_attempts, clock=clock)
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
                                                journal._grow_map, max_batch=1)
        return journal

    @classmethod
    def _open(cls, where: Path, *, sync: bool, readonly: bool, map_size: int,
              max_attempts: int, clock: Callable[[], float]) -> Journal:
        if not where.exists():
            if readonly:
                raise JournalUnreadable(f"{where}: no journal here (directory missing)")
            where.mkdir(mode=0o700, parents=True)
        elif not where.is_dir():
            raise JournalUnreadable(f"{where}: not a directory")
        data = where / DATA_FILE
        # An empty data.mdb holds nothing to lose (a creation interrupted by a
        # crash before the atomic rename cannot produce it, but a manual `touch` can).
        if data.exists() and data.stat().st_size > 0:
            probe(where)
            if not readonly and not os.access(data, os.W_OK):
                raise JournalUnreadable(f"{data}: not writable")
        elif readonly:
            raise JournalUnreadable(f"{where}: no journal here")
        else:
            _create(where, map_size)
        env = lmdb.open(str(where), map_size=map_size, max_dbs=tables.MAX_DBS,
                        readonly=readonly, sync=sync, metasync=sync, mode=0o600,
                        create=False, max_spare_txns=4)
        try:
            with env.begin() as txn:
                _check_meta(txn, env, where)  # again: it could have changed since the probe
            t = tables.open_tables(env, None)
            with env.begin() as txn:
                t.seq.adopt(tables.stored_seq(txn, t))
        except BaseException:
            env.close()
            raise
        return cls(env, t, where, readonly=readonly, max_attempts=max_attempts, clock=clock)

    def close(self) -> None:
        if self._pid == os.getpid():
            # A waiter cancelled mid-batch may leave its writer finishing: let it commit.
            if not self._committer.wait_idle(30.0):
                log.error("journal %s: closing while a write transaction still runs",
                          self.path)
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

    async def _write(self, fn: Callable[[Txn], T]) -> T:
        self._check_writable()
        return await self._committer.submit(fn)

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
                    *, exposure: Exposure | None = None, error: str = "") -> int:
        self._check_writable()
        # Seq, keys and value are made here, on the trio thread: the writer thread
        # then mostly just puts them (see tables.BatchWriter).
        return await self._committer.submit_defer(tables.PreparedDefer(
            self._t, path, identity=identity, reason=reason, profile=profile,
            exposure=exposure, error=error, now=self._clock()))

    async def complete(self, path: str, seq: int, verdict: VerdictRecord | None) -> bool:
        t = self._t
        return await self._write(lambda txn: tables.op_complete(txn, t, path, seq, verdict))

    async def put_verdict(self, verdict: VerdictRecord) -> None:
        t = self._t
        await self._write(lambda txn: tables.op_put_verdict(txn, t, verdict))

    async def claim(self, n: int, *, lease: float) -> list[DeferredEntry]:
        now, t = self._clock(), self._t
        return await self._write(lambda txn: queue.op_claim(txn, t, n, lease, now))

    async def release(self, path: str, seq: int, error: str, *, poison: bool = False) -> None:
        """A failed attempt (with back-off, poisoned after `max_attempts`); `poison`:
        the entry cannot be scanned at all (its reason in `error`), poisoned now."""
        now, t, limit = self._clock(), self._t, 1 if poison else self.max_attempts
        if await self._write(lambda txn: queue.op_release(
            txn, t, path=path, seq=seq, error=error, now=now, max_attempts=limit)):
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

    async def forget_path(self, path: str) -> None:
        t = self._t
        await self._write(lambda txn: tables.op_forget(txn, t, path))

    async def rename_path(self, old: str, new: str) -> None:
        t = self._t
        await self._write(lambda txn: tables.op_rename(txn, t, old, new))

    async def rename_tree(self, old_dir: str, new_dir: str) -> int:
        """A directory was renamed: entries below it follow (scans all entries)."""
        t = self._t
        return await self._write(lambda txn: tables.op_rename_tree(txn, t, old_dir, new_dir))

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
        await self._write(lambda txn: tables.op_add_quarantine(txn, t, rec))

    async def remove_quarantine(self, id: str) -> None:
        t = self._t
        await self._write(lambda txn: tables.op_remove_quarantine(txn, t, id))

    async def sync(self) -> None:
        self._check()
        env = self._env
        await self._committer.run_exclusive(lambda: env.sync(True))

    # --- reads -------------------------------------------------------------------------------

    def get_verdict(self, identity: Identity, sig_version: str) -> VerdictRecord | None:
        t = self._t
        return self._read(lambda txn: tables.get_verdict(txn, t, identity, sig_version))

    def get_deferred(self, path: str) -> DeferredEntry | None:
        t = self._t
        found = self._read(lambda txn: tables.find(txn, t, path))
        return None if found is None else found[1]

    def list_deferred(self, *, limit: int | None = None,
                      include_poisoned: bool = True) -> list[DeferredEntry]:
        t = self._t
        entries = self._read(lambda txn: [e for _, e in tables.iter_entries(txn, t)])
        entries.sort(key=lambda e: e.order)
        if not include_poisoned:
            entries = [e for e in entries if not e.poisoned]
        return entries if limit is None else entries[:limit]

    def list_quarantine(self) -> list[QuarantineRecord]:
        t = self._t

        def read(txn: Txn) -> list[QuarantineRecord]:
            out = []
            for key, raw in txn.cursor(db=t.quarantine):
                try:
                    out.append(decode_quarantine(raw))
                except JournalCorrupt as err:
                    log.warning("journal: skipping undecodable quarantine record %r: %s",
                                bytes(key), err)
            return out

        return sorted(self._read(read), key=lambda r: r.time)

    def get_quarantine(self, id: str) -> QuarantineRecord | None:
        t = self._t
        raw = self._read(lambda txn: txn.get(id.encode("utf-8", "surrogateescape"),
                                             db=t.quarantine))
        return None if raw is None else decode_quarantine(raw)

    def stats(self) -> dict[str, object]:
        t, now = self._t, self._clock()

        def read(txn: Txn) -> dict[str, object]:
            deferred = int(txn.stat(t.deferred)["entries"])
            indexed = int(txn.stat(t.order)["entries"])
            oldest: float | None = None
            size = 0
            for _, e in tables.iter_entries(txn, t):
                oldest = e.first_deferred if oldest is None else min(oldest, e.first_deferred)
                size += e.identity.size if e.identity is not None else 0
            return {
                "deferred": deferred, "poisoned": deferred - indexed,
                "oldest_age_s": None if oldest is None else max(0.0, now - oldest),
                "bytes": size, "verdicts": int(txn.stat(t.verdicts)["entries"]),
                "quarantined": int(txn.stat(t.quarantine)["entries"]),
            }

        out = self._read(read)
        info = self._env.info()
        stat = self._env.stat()
        out["map_size"] = int(info["map_size"])
        out["map_used"] = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        out["path"] = str(self.path)
        return out

    def statistics(self) -> dict[str, Any]:
        """Group-commit counters (for benchmarks and logs)."""
        return {"batches": self._committer.batches, "ops": self._committer.ops}
