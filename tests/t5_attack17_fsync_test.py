"""Attack on the journal's fsync error handling (journal/syncer.py, journal/commit.py)
through a real mount whose state disk fails one fsync the way Linux does.

After a failed writeback Linux marks the pages it could not write clean (fsyncgate):
a later fsync returns 0 without writing them. LMDB never rewrites a page a commit
did not change, so a later commit's tree still points at pages of the failed
commit. "The next fsync is tried afresh" then made that later commit durable on top
of pages that never reached the disk: at the next power cut the journal silently
lost records that had been durable for long before (here a whole leaf of deferred
entries, files older than the recovery watermark, so no walk brings them back).

The state directory lives on tests/cutfs.py with `fsync_drops`, which models that.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
from cutfs import fsync_drops
from filtering import journal_list
from mounting import mounted, wait_for
from outage import running_appliance, unaccounted, write_config
from powercut import cut_dirs
from statedisks import cutfs, durability

from vfile.journal import Journal, watermark

pytestmark = pytest.mark.mount

#: deferred entries: several LMDB leaf pages of them
FILES = 300


def _watermark(state: Path) -> int:
    journal = Journal.open(state, readonly=True)
    try:
        return journal._read(lambda txn: watermark.read_state(txn, journal._t))[1] or 0
    finally:
        journal.close()


def _settled(mnt: Path) -> bool:
    d = durability(mnt)
    return d["in_flight"] == 0 and d["queued"] == 0 and d["unsynced_commits"] == 0


def _journal_then_fail_one_fsync(src: Path, mnt: Path, state: Path, disk: Path,
                                 args: tuple[str, ...]) -> None:
    """Through a mount: FILES writes journaled and synced, the watermark past them; then
    the state disk fails one fsync, Linux's way (a tier-1 intent fails with EIO)."""
    for i in range(FILES):
        (mnt / f"f{i:03d}").write_bytes(b"written during the outage %d" % i)
    wait_for("every write journaled and synced", lambda: _settled(mnt), 60)
    written = time.time_ns()
    # The recovery watermark passes them: a later walk would not look at them.
    n = 0
    while _watermark(state) <= written:
        n += 1
        (mnt / "nudge" / f"n{n}").write_bytes(b"a commit")
        wait_for("the nudge synced", lambda: _settled(mnt), 30)
        assert n < 200, "the watermark never passed the writes"
        time.sleep(0.2)
    assert len(journal_list(state)) >= FILES
    fsync_drops(disk).touch()
    try:
        with open(mnt / "f000", "r+b") as f:
            f.write(b"X")
        failed = None
    except OSError as err:
        failed = err.errno
    assert failed == errno.EIO, failed
    fsync_drops(disk).unlink()


def _after_the_cut(src: Path, mnt: Path, state: Path, disk: Path, statefs: Path, *,
                   args: tuple[str, ...]) -> None:
    """The power cut: cutfs comes back with what was fsynced. vfile starts on it again
    (walking if its rule says so) and stops cleanly; nothing may be lost."""
    with cutfs(disk, statefs):
        with mounted(src, mnt, *args):
            pass
        journal = Journal.open(state, readonly=True)
        try:
            problems = journal.check()
        finally:
            journal.close()
        lost = unaccounted(src, state, "")
        assert (problems, lost) == ([], []), (problems[:3], len(problems), lost)


def _dirs(tmp_path: Path) -> tuple[Path, Path, Path, Path, tuple[str, ...]]:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    (src / "nudge").mkdir()
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    return src, mnt, disk, statefs, ("--config", str(cfg), "--state-dir",
                                     str(statefs / "state"))


def test_a_failed_fsync_does_not_lose_older_records_at_the_next_power_cut(
        tmp_path: Path) -> None:
    src, mnt, disk, statefs, args = _dirs(tmp_path)
    state = statefs / "state"
    with running_appliance(fault="refuse") as app:  # an outage: every write is deferred
        args = ("--appliance", app.url, *args)
        # A tier-1 intent whose fsync fails answers EIO and logs the unexpected error
        # with its traceback (vfile.passthrough.opsbase): expected here.
        with cutfs(disk, statefs), \
                mounted(src, mnt, *args, "-v", tracebacks_expected=True) as server:
            _journal_then_fail_one_fsync(src, mnt, state, disk, args)
            # The disk works again: the next tier-1 intent is fsynced, and told so.
            with open(mnt / f"f{FILES - 1:03d}", "r+b") as f:
                f.write(b"Y")
            wait_for("settled", lambda: _settled(mnt), 60)
            server.kill()
        _after_the_cut(src, mnt, state, disk, statefs, args=args)


def test_a_crash_right_after_a_failed_fsync_does_not_lose_older_records_either(
        tmp_path: Path) -> None:
    """The server dies right after the failed fsync, before any other: what it knew (pages
    to write again) dies with it. The next start on the same boot and state disk must
    not make a commit durable on top of those pages."""
    src, mnt, disk, statefs, args = _dirs(tmp_path)
    state = statefs / "state"
    with running_appliance(fault="refuse") as app:
        args = ("--appliance", app.url, *args)
        with cutfs(disk, statefs):
            with mounted(src, mnt, *args, "-v", tracebacks_expected=True) as server:
                _journal_then_fail_one_fsync(src, mnt, state, disk, args)
                server.kill()
            with mounted(src, mnt, *args) as server:  # same boot: no cut yet
                with open(mnt / f"f{FILES - 1:03d}", "r+b") as f:
                    f.write(b"Y")
                wait_for("settled", lambda: _settled(mnt), 60)
                server.kill()
        _after_the_cut(src, mnt, state, disk, statefs, args=args)
