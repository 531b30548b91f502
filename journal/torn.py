"""A journal torn by a power loss in the middle of its fsync: found before the mount
opens it, moved aside, salvaged, replaced by a fresh one (README "Durability of
journal records", "A power loss during the journal's fsync").

The environment runs with `sync=False` and is fdatasynced by a thread
(journal.syncer). One fdatasync writes the pages dirtied since the last one in any
order, and NOSYNC commits may have overwritten pages of the last durable tree: a
power loss in the middle of it can leave the newest meta page pointing at pages
never written, or at pages holding another tree's bytes. LMDB then reads garbage:
seen through tests/cutfs.py's torn mode, an open that calls the journal foreign,
an `mdb.c` assertion that aborts the process, or a journal that opens and serves
wrong records (t5_torn_journal_test.py).

`ensure_intact` runs before `Journal.open` on a mount's start. In a child process
(a crash in LMDB's C code takes down the child, not the mount) it:
- returns at once when the last run stopped cleanly (its close fsynced everything
  and nothing wrote since) or when the witness vouches that the page cache
  survived (a process crash: the kernel holds every page, nothing can be torn);
- otherwise (a power loss, a reboot after an unclean stop) reads every page of
  every table through cursors (keys in order, values decoded) and runs the
  journal's own check (journal.check).
A damaged journal (the check failed, or the child crashed or hung) is moved aside
into `damaged-<UTC time>/` (0700, the file 0600, kept for forensics); a second
child salvages what it can read, table by table, streaming each record as it goes
(a crash part-way keeps what came before): quarantine records first, then deferred
entries. The caller creates a fresh journal, writes them back and walks the whole
source (vfile.filter.recovery, every file: there is no watermark to trust), so every
file gets an entry again before the mount serves: nothing lost, at a rescan's cost.

The rebuild is resumable: `PENDING` (beside the journal, naming the aside directory) is
written and fsynced before the move and removed only once the walk is done
(`finished`). A start killed in between (a salvage or a restore past systemd's start
timeout, a second power cut) would otherwise leave the next one a fresh journal whose
clean history calls for no walk: every entry of the damaged one lost (x22,
tests/t5_attack22_torn_test.py). The next start finds the marker and salvages the same
aside directory again (a duplicated entry only means a scan more).

And idempotent: the fresh journal itself says how far the rebuild got (its meta key
`rebuild`: "restored NAME" once the salvaged records are in, "walked NAME" once the walk
is done, each durable before the next step). A marker whose rebuild the journal in place
calls walked is only removed (its unlink had failed: before, every later start restored
the aside journal's quarantine records again, those an administrator had deleted
included, t23); one it calls restored walks again without restoring.

Salvaged, in this order: quarantine records, taint records (journal.taint: an inode
found infected stays denied until a clean scan; an undecodable one is kept as "content
unknown", as `taint.get` reads it), deferred entries with their exposures.

Invariants:
- A journal that is not provably vfile's (no `lock.mdb` symlink vfile placed) and
  looks foreign is left alone: the open then refuses it (exit 7), as before.
- The damaged file is never modified or deleted; the rename is fsynced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from vfile.journal import check, environment, pages, tables, taint, watermark
from vfile.journal.records import (
    DeferredEntry,
    JournalCorrupt,
    JournalError,
    QuarantineRecord,
    decode_deferred,
    decode_quarantine,
)
from vfile.journal.store import Journal

log = logging.getLogger(__name__)

#: the child's exit codes
INTACT, DAMAGED = 0, 1
#: how long a check of the whole journal may take before it counts as damaged (a torn
#: tree can loop); far above the 1M-entry figure in the README
CHECK_TIMEOUT = 900.0
ASIDE_PREFIX = "damaged-"
CHECKED = "checking every page"
#: written by a mount beside its journal (vfile.service)
SIG_FILE = "last-signature-version"
#: written before a damaged journal is moved aside, removed once the walk is done: the
#: aside directory's name (module doc)
PENDING = "rebuild-pending"
#: the fresh journal's `tables.REBUILD_KEY` values (+ the aside directory's name), and
#: the child's line that reports it
RESTORED, WALKED, NOTE = "restored ", "walked ", "rebuild note:"


@dataclass
class Rebuilt:
    """What `ensure_intact` did with a damaged journal."""

    aside: Path
    reason: str
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    taint: list[taint.TaintRecord] = field(default_factory=list)
    deferred: list[DeferredEntry] = field(default_factory=list)
    #: records the salvage read but could not decode (torn pages)
    undecodable: int = 0
    #: the marker `finished` removes
    pending: Path | None = None
    #: the salvaged records are in the journal in place already (a resumed rebuild)
    restored: bool = False

    def summary(self) -> dict[str, object]:
        return {"journal_rebuilt": 1, "salvaged_quarantine": len(self.quarantine),
                "salvaged_taint": len(self.taint), "salvaged_entries": len(self.deferred),
                "salvage_undecodable": self.undecodable}


# --- in the child ---------------------------------------------------------------------------

def _open_ro(where: Path) -> lmdb.Environment:
    return lmdb.open(str(where), readonly=True, lock=False, create=False,
                     max_dbs=tables.MAX_DBS, subdir=True)


def _read_everything(env: lmdb.Environment, txn: lmdb.Transaction) -> list[str]:
    """Touch every page of every table: branch and leaf pages through the cursors,
    overflow pages through the values; keys must come in order."""
    out: list[str] = []
    names = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
    for name in names:
        db = env.open_db(name, txn=txn, create=False)
        last: bytes | None = None
        n = 0
        for k, v in txn.cursor(db=db):
            key = bytes(k)
            if last is not None and key <= last:
                out.append(f"table {name!r}: key {key!r} out of order after {last!r}")
                break
            last = key
            n += len(bytes(v))
    return out


def _verify(where: Path, witness: Path | None) -> int:
    """The child's check: INTACT or DAMAGED (printed: why). An environment LMDB will
    not open at all (no valid meta page) is INTACT here: LMDB writes its meta pages
    whole, so a torn fsync leaves one readable; this is damage of another kind, which
    the open refuses (exit 7) and leaves for forensics, as before."""
    try:
        env = _open_ro(where)
    except lmdb.Error as err:
        print(f"not opened, left to the open: {err}")
        return INTACT
    try:
        try:  # before the read transaction: handles opened later are not valid in it
            t = tables.open_tables(env, None)
        except lmdb.Error as err:
            print(f"its tables cannot be opened: {err}")
            return DAMAGED
        with env.begin() as txn:
            run, _ = watermark.read_state(txn, t)
            if txn.get(b"magic", db=t.meta) != tables.MAGIC:
                print("its meta table has lost vfile's magic")
                return DAMAGED  # torn, or foreign: the caller tells which
            note = txn.get(tables.REBUILD_KEY, db=t.meta)
            if note is not None:
                print(NOTE, bytes(note).decode(errors="replace"))
            if watermark.stopped_cleanly(run, int(env.info()["last_txnid"])):
                print("clean stop")
                return INTACT  # a clean close fsynced everything; nothing wrote since
            seen = watermark.Witness.read(witness) if witness is not None else None
            if watermark.survived(seen, watermark.boot_id(), int(env.info()["last_txnid"]),
                                  run):
                print("page cache survived")
                return INTACT  # a process crash: the page cache held every page
            print(CHECKED)
            # First every page from the file itself, the free table included (no
            # cursor reads it, LMDB's write path does: pages.py); then through LMDB.
            problems = pages.audit(where / environment.DATA_FILE)
            if not problems:
                problems = _read_everything(env, txn) + check.problems(txn, t)
    except lmdb.Error as err:
        print(f"LMDB: {err}")
        return DAMAGED
    finally:
        env.close()
    for p in problems[:5]:
        print(p)
    return DAMAGED if problems else INTACT


def _salvage(where: Path) -> None:
    """Stream every record of the tables worth keeping, one line each, flushed."""
    env = _open_ro(where)
    try:
        for name, tag in ((b"quarantine", "Q"), (taint.TABLE, "T"), (b"deferred", "D")):
            try:
                with env.begin() as txn:
                    db = env.open_db(name, txn=txn, create=False)
                    for k, v in txn.cursor(db=db):
                        sys.stdout.write(f"{tag} {bytes(k).hex()} {bytes(v).hex()}\n")
                        sys.stdout.flush()
            except lmdb.Error as err:
                sys.stdout.write(f"E {name.decode()}: {err}\n")
    finally:
        env.close()


def main(argv: list[str]) -> int:
    what, where = argv[0], Path(argv[1])
    if what == "verify":
        return _verify(where, Path(argv[2]) if len(argv) > 2 and argv[2] else None)
    _salvage(where)
    return 0


# --- in the mount ---------------------------------------------------------------------------

def _child(*args: str, timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run([sys.executable, "-m", "vfile.journal.torn", *args],
                              capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else ""
        return -1, out + f"\n(no answer within {timeout:.0f} s)"
    text = done.stdout.decode(errors="replace")
    if done.returncode < 0 or done.returncode > DAMAGED:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        text += f"\n(the check crashed: {'; '.join(tail) or f'status {done.returncode}'})"
    return done.returncode, text


def _ours(state_dir: Path) -> bool:
    """A vfile state directory: lock.mdb points at vfile's tmpfs lock file
    (environment.place_lock), or the mount saved its signature version there."""
    if (state_dir / SIG_FILE).exists():
        return True
    try:
        return Path(os.readlink(state_dir / environment.LOCK_FILE)).name.startswith("journal-")
    except OSError:
        return False


def ensure_intact(state_dir: Path, lock_dir: Path | None) -> Rebuilt | None:
    """Before a mount opens its journal: None if it is intact (or absent, or not a
    vfile journal: the open says so); else move it aside, salvage it and return what
    was saved. The caller opens a fresh journal, writes it back and walks everything."""
    aside = _pending(state_dir)
    why, note = _damage_of(state_dir, lock_dir)
    if aside is None:
        return None if why is None else _move_aside_and_salvage(state_dir, why)
    marker = state_dir / PENDING
    if why is not None:
        # The fresh journal the killed start was filling (a second power cut tore it
        # too): it holds only that start's restore and walk, both redone now. Kept
        # aside unsalvaged; the marker still names the first (r22,
        # tests/t5_attack22_torn_test.py).
        log.warning("journal %s: the journal an unfinished rebuild created is damaged "
                    "too (%s); moved to %s", state_dir, why, _set_aside(state_dir))
        note = None
    if note == WALKED + aside.name:
        # Done: only the marker's removal failed. Restoring again would bring back what
        # was deleted since (module doc).
        log.info("journal %s: the rebuild from %s was finished; clearing %s", state_dir,
                 aside, PENDING)
        try:
            _clear(marker)
        except OSError as err:
            log.warning("journal %s: cannot clear %s (%s); nothing is redone", state_dir,
                        PENDING, err)
        return None
    restored = note == RESTORED + aside.name
    log.warning("journal %s: an earlier start moved the damaged journal to %s and did not "
                "finish rebuilding; %s", state_dir, aside,
                "walking the source again" if restored else "salvaging it again")
    reason = "an earlier rebuild did not finish"
    if restored:
        return Rebuilt(aside, reason, pending=marker, restored=True)
    return _salvage_aside(aside, reason, marker)


def damage(state_dir: Path) -> str | None:
    """For `vfile journal` run offline: why the journal in place is damaged (None if it is
    intact, absent or not vfile's), by the mount's own check in a child (a crash in LMDB's
    C code takes down the child). Nothing is written, moved or rebuilt: the next mount's
    start does that (x24, tests/t5_journal_cli_torn24_test.py). The lock directory
    `lock.mdb` points into is checked first, as the open would (JournalUnreadable if it
    is not private to us): the child reads the witness there, and a FIFO another user
    planted at its name would hold it."""
    environment.ensure_lock_dir(state_dir)
    return _damage_of(state_dir, None)[0]


def _damage_of(state_dir: Path, lock_dir: Path | None) -> tuple[str | None, str | None]:
    """Why the journal in place is damaged (None if it is intact, absent or foreign), and
    the rebuild note it holds (module doc)."""
    data = state_dir / environment.DATA_FILE
    try:
        if data.stat().st_size == 0:
            return None, None
    except OSError:
        return None, None  # absent (created fresh) or unreadable (the open names it)
    witness = watermark.witness_for(state_dir, lock_dir)
    started = time.monotonic()
    rc, out = _child("verify", str(state_dir), str(witness or ""), timeout=CHECK_TIMEOUT)
    if CHECKED in out or rc != INTACT:
        log.info("journal %s: integrity check after an unclean stop: %.2f s (status %d)",
                 state_dir, time.monotonic() - started, rc)
    notes = [line[len(NOTE):].strip() for line in out.splitlines() if line.startswith(NOTE)]
    if rc == INTACT or not _ours(state_dir):
        # (a foreign LMDB environment: the open refuses it, as before)
        return None, (notes[0] if notes and rc == INTACT else None)
    why = " ".join(line for line in out.replace(CHECKED, "").splitlines()
                   if not line.startswith(NOTE))
    why = " ".join(why.split())
    return why[:300] or f"status {rc}", None


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clear(marker: Path) -> None:
    marker.unlink(missing_ok=True)
    _fsync_dir(marker.parent)


def _pending(state_dir: Path) -> Path | None:
    """The aside directory `PENDING` names: a rebuild an earlier start began."""
    marker = state_dir / PENDING
    try:
        name = marker.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise JournalError(f"{marker}: cannot read it: {err.strerror}") from None
    aside = state_dir / name
    data = aside / environment.DATA_FILE
    if "/" in name or not name.startswith(ASIDE_PREFIX) or aside.is_symlink() \
            or data.is_symlink() or not data.is_file():
        # Stopped before the move: the damaged journal is still in place, checked anew.
        with contextlib.suppress(OSError):  # (a move-aside rewrites it)
            _clear(marker)
        return None
    return aside


async def finished(journal: Journal, rebuilt: Rebuilt) -> None:
    """The rebuild is done (restored, the whole source walked): no start redoes it. The
    journal says so first, durably: a marker whose unlink fails is then only removed by
    the next start (module doc). Raises OSError, JournalError."""
    if rebuilt.pending is not None:
        await journal.note_rebuild((WALKED + rebuilt.aside.name).encode())
        _clear(rebuilt.pending)


def _new_aside(state_dir: Path) -> Path:
    aside = state_dir / (ASIDE_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    n = 0
    while aside.exists():
        n += 1
        aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
    return aside


def _set_aside(state_dir: Path) -> Path:
    """Move the journal in place to a new aside directory (no marker, no salvage)."""
    aside = _new_aside(state_dir)
    try:
        aside.mkdir(mode=0o700)
        os.rename(state_dir / environment.DATA_FILE, aside / environment.DATA_FILE)
        for d in (aside, state_dir):
            _fsync_dir(d)
    except OSError as err:
        raise JournalError(f"{state_dir}: the journal is damaged and cannot be moved "
                           f"aside: {err}") from None
    return aside


def _move_aside_and_salvage(state_dir: Path, reason: str) -> Rebuilt:
    aside = _new_aside(state_dir)
    marker = state_dir / PENDING
    try:
        aside.mkdir(mode=0o700)
        os.chmod(aside, 0o700)
        tmp = state_dir / (PENDING + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            os.write(fd, aside.name.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, marker)
        _fsync_dir(state_dir)  # the marker is durable before the journal moves
        os.rename(state_dir / environment.DATA_FILE, aside / environment.DATA_FILE)
        os.chmod(aside / environment.DATA_FILE, 0o600)
        for d in (aside, state_dir):
            _fsync_dir(d)
    except OSError as err:
        # Not the lock file's trouble (the caller's OSError): say what failed. The
        # journal stays in place (or the marker says where it went) for the next start.
        raise JournalError(f"{state_dir}: the journal is damaged ({reason}) and cannot be "
                           f"moved aside: {err}") from None
    return _salvage_aside(aside, reason, marker)


def _salvage_aside(aside: Path, reason: str, marker: Path) -> Rebuilt:
    state_dir = aside.parent
    out = Rebuilt(aside, reason, pending=marker)
    rc, text = _child("salvage", str(aside), timeout=CHECK_TIMEOUT)
    for line in text.splitlines():
        tag, _, rest = line.partition(" ")
        k, _, v = rest.partition(" ")
        if tag not in ("Q", "T", "D") or not v:
            continue  # an error line, or the last line a crash cut short
        try:
            value = bytes.fromhex(v)
            if tag == "Q":
                out.quarantine.append(decode_quarantine(value))
            elif tag == "T":
                out.taint.append(_taint(bytes.fromhex(k), value))
            else:
                out.deferred.append(decode_deferred(value))
        except (ValueError, JournalCorrupt):
            out.undecodable += 1
    with contextlib.suppress(OSError):
        os.chmod(aside / environment.DATA_FILE, 0o600)
    if rc != 0:
        log.warning("journal %s: the salvage stopped early (%s)", state_dir,
                    " ".join(text.splitlines()[-1:]))
    return out


def _taint(key: bytes, value: bytes) -> taint.TaintRecord:
    """A salvaged taint record; undecodable, still the inode's (its key): content unknown,
    denied until a clean scan, as `taint.get` reads it. ValueError: not even the key."""
    try:
        return taint.decode_taint(value)
    except JournalCorrupt:
        if len(key) != 16:
            raise ValueError(f"a taint key of {len(key)} bytes") from None
        dev, ino = int.from_bytes(key[:8], "big"), int.from_bytes(key[8:], "big")
        return taint.TaintRecord(dev, ino, -1, "", "unknown", 0.0)


async def restore(journal: Journal, rebuilt: Rebuilt) -> None:
    """Write the salvaged records into the fresh journal (tier 1: fsynced), then say so
    in it (module doc); nothing if a resumed rebuild had restored them. A stale or
    duplicated deferred entry only means a scan more; a stale taint, a denial until the
    file's rescan."""
    if not rebuilt.restored:
        for rec in rebuilt.quarantine:
            await journal.add_quarantine(rec)
        for t in rebuilt.taint:
            await journal.put_taint(t)
        for e in rebuilt.deferred:
            for exposure in e.exposures or (None,):
                await journal.defer(e.path, e.identity, e.reason, e.profile,
                                    exposure=exposure, error=e.last_error)
        await journal.note_rebuild((RESTORED + rebuilt.aside.name).encode())
    journal.rebuilt = rebuilt.summary()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
