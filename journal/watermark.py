"""Tier 1w: a create's intent without an fsync, made safe by a durable watermark.

A create (a NEW file: an O_CREAT that made it, a mknod) journals its intent
committed but not fsynced ("tier 1w", README "Durability of journal records").
What makes that safe across a power loss is this module:

- the watermark W (meta `watermark`, u64 ns of CLOCK_REALTIME): every intent
  committed before W is on disk. The mount's background sync advances it:
  it reads the clock t0, fsyncs the environment, and only then stores
  W = t0 - `MARGIN_NS` durably (`op_advance`). A commit that completed before
  t0 is covered by that fsync; one that completed after t0 precedes its file's
  creation, so the file's ctime is above t0 - margin (the margin covers the
  kernel's coarse clock for ctime, which lags the real one by a tick).
- the run marker (meta `run`): `clean` is written durably by a clean close,
  `running` durably when a mount starts. `running` at start means the last
  run did not close cleanly.
- the witness: the last committed transaction id and the boot id, kept outside
  the state disk (a tmpfs, beside LMDB's lock file) and rewritten after every
  commit (one 64-byte pwrite on a tmpfs). After an unclean stop, the page cache
  of the state disk survived (a process crash, SIGKILL) exactly when the
  witness names this boot, no transaction it saw is missing from the journal and
  no create's intent was still queued (`pending`, journal.inflight: a create no
  longer waits for its intent's commit); then every tier-1w intent is in the journal.

The recovery rule (`Recovery.walk`): after an unclean stop whose page cache did
not survive, every regular file of the source whose ctime is above W is
journaled (tier 1) before the mount serves (vfile.filter.recovery).

Invariants:
- W never goes down (`op_advance` keeps the larger value), and is stored only
  after the fsync that covers every commit completed before the clock read.
- Only `clean:<txnid>` naming the journal's last transaction is a clean stop (a new
  journal is created with one); an absent, bare, older or garbled marker is what a
  torn tree can show, and counts as an unclean stop (`stopped_cleanly`, x24).
- No witness (no lock directory, a tmpfs emptied by a reboot), another boot,
  or a witness ahead of the journal: the page cache did not survive.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lmdb

from vfile.journal import environment, keys, tables
from vfile.journal.records import JournalError
from vfile.journal.tables import Tables, Txn

log = logging.getLogger(__name__)

WATERMARK_KEY = b"watermark"
RUN_KEY = tables.RUN_KEY
#: the source the last run served: "<st_dev>:<st_ino>\0<realpath>"
SOURCE_KEY = b"source"
#: older vfiles' clean marker, which named no transaction: no longer trusted
CLEAN = b"clean"
RUNNING = b"running"
#: W lags the clock read before its fsync by this much: ctime comes from the kernel's
#: coarse clock (a tick behind), and a small step of the clock must not open a gap.
MARGIN_NS = 2_000_000_000
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_WITNESS_LEN = 128  # "<boot id>\n<txn id, 20 digits>\n<run marker>\n<pending 0/1>\n", padded


def boot_id() -> str:
    try:
        with open(BOOT_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


# --- the meta records (plain functions of a transaction) ------------------------------------

def read_state(txn: Txn, t: Tables) -> tuple[bytes | None, int | None]:
    """(the run marker, the watermark in ns) as stored; None where absent."""
    run = txn.get(RUN_KEY, db=t.meta)
    raw = txn.get(WATERMARK_KEY, db=t.meta)
    return (None if run is None else bytes(run),
            None if raw is None else keys.from_u64(raw))


def new_run_marker() -> bytes:
    """`running:<random>`: each run's own, so a witness names the run it followed."""
    return RUNNING + b":" + os.urandom(8).hex().encode()


def op_set_run(txn: Txn, t: Tables, marker: bytes, source: bytes = b"") -> None:
    txn.put(RUN_KEY, marker, db=t.meta)
    if source:
        txn.put(SOURCE_KEY, source, db=t.meta)


def read_source(txn: Txn, t: Tables) -> bytes:
    raw = txn.get(SOURCE_KEY, db=t.meta)
    return b"" if raw is None else bytes(raw)


def source_key(root_fd: int, path: str) -> bytes:
    st = os.fstat(root_fd)
    return f"{st.st_dev}:{st.st_ino}".encode() + b"\0" + os.fsencode(path)


def check_source(found: Recovery, stored: bytes, source: bytes) -> None:
    """A walk is due for the source the last run served, and only a start on that
    source does it: a start on another would settle the recovery (run marker, witness)
    without walking the files whose intents were lost. The same source: its
    directory (device numbers may change across a reboot) or its path."""
    if not found.walk or not stored or not source:
        return
    old_id, _, old_path = stored.partition(b"\0")
    new_id, _, new_path = source.partition(b"\0")
    if old_id != new_id and old_path != new_path:
        raise JournalError(
            f"the last run, on {os.fsdecode(old_path)!r}, stopped uncleanly and may have "
            "lost records: start vfile on that source first, so its recovery walk runs "
            "(or give this source its own state directory)")


def covers_new_files(watermark_ns: int | None, now_ns: int) -> bool:
    """A create made now will have a ctime above W, so the walk finds its file if its
    tier-1w intent is lost; not so once the clock stepped back below W + margin (NTP,
    a corrected RTC): until it is past that again, a create's intent is tier 1."""
    return watermark_ns is None or now_ns - MARGIN_NS > watermark_ns


def mark_clean(env: lmdb.Environment, t: Tables) -> None:
    """A clean stop, durably (no writer runs: the caller's thread may write)."""
    with env.begin(write=True) as txn:
        op_set_run(txn, t, tables.clean_marker(txn.id()))
    env.sync(True)


def stopped_cleanly(run: bytes | None, journal_txnid: int) -> bool:
    """The marker is a clean stop's and names the journal's last transaction: the tree
    read is the one that clean close wrote and fsynced, whole. Anything else is an
    unclean stop: `running`, and a marker a power loss tore (x24,
    tests/t5_run_marker24_test.py): absent, empty, truncated, garbage, or a clean
    marker read from an older tree's page (LMDB reuses pages, and a meta page that
    reached the disk may point at pages whose new bytes did not), which names an
    older transaction. An older vfile's bare `clean` names none: its first start after
    the upgrade checks the journal and walks once."""
    return run is not None and run == tables.clean_marker(journal_txnid)


def op_advance(txn: Txn, t: Tables, ns: int) -> int:
    """Raise the watermark to `ns` (never lower it); the stored value."""
    raw = txn.get(WATERMARK_KEY, db=t.meta)
    old = 0 if raw is None else keys.from_u64(raw)
    if ns > old:
        txn.put(WATERMARK_KEY, keys.u64(ns), db=t.meta)
        return ns
    return old


# --- the witness -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Seen:
    boot: str
    txnid: int
    #: the run marker of the run whose commits it followed: a witness left by another
    #: run (another path of the same state directory, another journal) vouches for nothing
    run: bytes = b""
    #: a create's intent was queued and not yet committed (journal.inflight): whatever
    #: the transaction id says, the journal may miss it, so the next start walks
    pending: bool = False


class Witness:
    """The last committed transaction id, in a file on a tmpfs (module docstring)."""

    def __init__(self, path: Path, run: bytes) -> None:
        self.path = path
        self._boot = boot_id()
        self.run = run  # the journal's run marker, written with every record
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @staticmethod
    def read(path: Path) -> Seen | None:
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        boot, _, rest = raw.decode("ascii", "replace").partition("\n")
        try:
            txnid, *run = rest.split()
            return Seen(boot.strip(), int(txnid), run[0].encode() if run else b"",
                        pending=len(run) > 1 and run[1] != "0")
        except (ValueError, IndexError):
            return None

    def record(self, txnid: int, pending: bool = False) -> None:
        """After a commit (the writer thread), or when the first create's intent is queued
        or the last one lands (journal.inflight, under its lock): one pwrite, atomic
        against a kill. `pending`: an intent is queued and not yet committed."""
        line = f"{self._boot}\n{txnid:020d}\n{self.run.decode()}\n{int(pending)}\n".encode()
        line = line.ljust(_WITNESS_LEN)
        try:
            os.pwrite(self._fd, line, 0)
        except OSError as err:  # a full tmpfs: the next start then walks (sound)
            log.debug("journal witness %s: %s", self.path, err)

    def poison(self) -> None:
        """Vouch for nothing: an empty witness reads as none, so an unclean stop from
        now on walks. Truncating never needs room, even on a full tmpfs."""
        try:
            os.ftruncate(self._fd, 0)
        except OSError as err:
            log.warning("journal witness %s: cannot clear it: %s", self.path, err)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def survived(seen: Seen | None, boot: str, journal_txnid: int, run: bytes | None) -> bool:
    """The witness vouches that no commit was lost since it was written: it followed
    the run that left the journal's run marker, in this boot, up to no further than
    the journal's last transaction."""
    return (seen is not None and bool(boot) and seen.boot == boot and not seen.pending
            and seen.run == (run or b"") and seen.txnid <= journal_txnid)


def open_witness(path: Path | None, journal_txnid: int, run: bytes | None
                 ) -> tuple[Seen | None, Witness | None, bool]:
    """What the witness at `path` saw, and the witness this process keeps.

    Every writable open goes through here, a mount's or `vfile journal`'s: if the
    witness no longer vouches for the journal (commits lost), it is cleared before
    this process commits anything, so no later commit can raise the journal's
    transaction id back over it and make the loss look like a surviving page cache;
    a mount vouches again only once its recovery walk is done (`Journal.vouch`).
    If it does vouch (the bool), it is left as it is: only a mount writes it again
    (`Journal.vouch`). A process beside a live mount (`vfile journal gc`) that wrote it
    would clear the mount's `pending` (creates' intents queued, journal.inflight)."""
    if path is None:  # no lock directory: no witness, an unclean stop always walks
        return None, None, False
    seen = Witness.read(path)
    try:
        witness = Witness(path, run or b"")
    except OSError as err:  # no witness: an unclean stop then always walks (sound)
        log.warning("journal witness %s: cannot keep it: %s", path, err)
        return seen, None, False
    vouches = survived(seen, boot_id(), journal_txnid, run)
    if not vouches:
        witness.poison()
    return seen, witness, vouches


def witness_path(lock_target: Path) -> Path:
    """Beside LMDB's lock file in the lock directory (a tmpfs)."""
    return lock_target.with_suffix(".commits")


def witness_for(state_dir: Path, lock_dir: str | os.PathLike[str] | None) -> Path | None:
    """The witness of the journal in `state_dir`: beside its lock file on the tmpfs, which
    `vfile journal` (no lock directory given) finds through the `lock.mdb` symlink."""
    if lock_dir is not None:
        return witness_path(environment.lock_target(state_dir, Path(lock_dir)))
    link = state_dir / environment.LOCK_FILE
    if link.is_symlink():
        return witness_path(Path(os.readlink(link)))
    return None


# --- the recovery decision (pure) -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Recovery:
    """What a mount found when it started on this journal."""

    #: the last run closed cleanly (or there was none: a new journal)
    clean: bool
    #: the state disk's page cache survived the unclean stop (same boot, nothing lost)
    cache_survived: bool
    #: the durable watermark, ns (None: never advanced: walk every file)
    watermark_ns: int | None

    @property
    def walk(self) -> bool:
        """Journal every file with ctime above the watermark before serving."""
        return not self.clean and not self.cache_survived


def decide(run: bytes | None, watermark_ns: int | None, seen: Seen | None, boot: str,
           journal_txnid: int) -> Recovery:
    """The recovery rule, from what is stored, what the witness saw, and this boot."""
    clean = stopped_cleanly(run, journal_txnid)
    return Recovery(clean=clean, cache_survived=survived(seen, boot, journal_txnid, run),
                    watermark_ns=watermark_ns)
