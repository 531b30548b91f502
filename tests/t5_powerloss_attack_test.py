"""Attacks on the watermark rule (journal.watermark): unclean stops that land while
the recovery walk has not finished, and journal edits between runs.

Each test loses the tier-1w intents of files created through the mount (SIGKILL,
then a cut of tests/cutfs.py under the state directory), then does what an
operator or a second failure would do before the next clean start, and checks that
every file created through the mount still ends with a journal entry or a clean
verdict.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import is_mounted, mounted, stop_process, vfile_cmd, wait_for
from outage import running_appliance, unaccounted
from powercut import FILES, config, create_and_kill, cut_dirs
from statedisks import cutfs

from vfile.journal import Journal

pytestmark = pytest.mark.mount

#: files put in the source behind vfile's back (the walk journals them too: W was never
#: advanced): they make the walk long enough to be killed in the middle of it
BULK = 20_000
WALKING = "journaling every file changed since"


def _dirs(tmp: Path) -> tuple[Path, Path, Path, Path]:
    return cut_dirs(tmp)


@contextlib.contextmanager
def _after_the_cut(tmp: Path, *, bulk: int = 0
                   ) -> Iterator[tuple[Path, Path, Path, tuple[str, ...], str]]:
    """FILES creates in `d/` through the mount (after `bulk` files put in the source
    behind vfile's back), SIGKILL, the cut; yields (source, mountpoint, state dir,
    mount arguments, signature version) with cutfs serving the cut state."""
    src, mnt, disk, statefs = _dirs(tmp)
    for i in range(bulk):
        (src / f"bulk{i}").write_bytes(b"")
    state = statefs / "state"
    args = ("--config", str(config(tmp)), "--state-dir", str(state))
    with running_appliance() as app:
        args = ("--appliance", app.url, *args)
        with cutfs(disk, statefs):
            sig = create_and_kill(src, mnt, state, args, subdir="d")
        with cutfs(disk, statefs):  # the cut
            assert _created(src, state, sig), "the cut lost no intent: nothing to show"
            yield src, mnt, state, args, sig


def _created(src: Path, state: Path, sig: str) -> list[str]:
    """The files created through the mount that have neither entry nor clean verdict."""
    return [p for p in unaccounted(src, state, sig) if p.startswith("d/")]


def _kill_during_walk(src: Path, mnt: Path, args: tuple[str, ...], log: Path) -> None:
    """Start vfile and SIGKILL it as soon as it says the recovery walk begins."""
    with log.open("wb") as out:
        proc = subprocess.Popen(vfile_cmd("mount", "--foreground", *args, "--", str(src),
                                          str(mnt)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for("the recovery walk to begin",
                 lambda: WALKING in log.read_text() or proc.poll() is not None, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc)
    text = log.read_text()
    assert WALKING in text, text
    assert "recovery walk:" not in text, "the walk ended before the kill: " + text
    assert not is_mounted(mnt), "the mount served before its walk ended"


def test_a_kill_during_the_recovery_walk_does_not_let_the_next_start_skip_it(
        tmp_path: Path) -> None:
    with _after_the_cut(tmp_path, bulk=BULK) as (src, mnt, state, args, sig):
        _kill_during_walk(src, mnt, args, tmp_path / "walk.log")
        # The killed walk never reached d/ (it walks the root's files first).
        assert _created(src, state, sig), "the killed walk already journaled d/"
        with mounted(src, mnt, *args, "-v"):
            pass  # the next start must walk again before it serves
        assert _created(src, state, sig) == []


def test_journal_edits_between_runs_do_not_hide_lost_intents(tmp_path: Path) -> None:
    """After the cut, an operator's `vfile journal` edits (each a transaction) must
    not make the lost commits look present to the next start."""
    with _after_the_cut(tmp_path) as (src, mnt, state, args, sig):
        journal = Journal.open(state, readonly=True)  # a read leaves the witness be
        lost_txns = _witnessed(state) - int(journal._env.info()["last_txnid"])
        journal.close()
        assert lost_txns > 0
        # An entry added, then `vfile journal purge`d: two transactions a round;
        # enough rounds to make up for the lost ones.
        (src / "edited").write_bytes(b"")
        for _ in range(lost_txns // 2 + 1):
            _seed_entry(state, "edited")
            subprocess.run(vfile_cmd("journal", "purge", "edited", "--yes", "--state-dir",
                                     str(state)), check=True, capture_output=True,
                           timeout=60)
        with mounted(src, mnt, *args, "-v"):
            pass
        assert _created(src, state, sig) == []


def _witnessed(state: Path) -> int:
    """The transaction id the witness (on the lock directory's tmpfs) last saw."""
    from vfile.journal.watermark import Witness

    lock = Path(os.readlink(state / "lock.mdb"))
    seen = Witness.read(lock.with_suffix(".commits"))
    assert seen is not None
    return seen.txnid


def _seed_entry(state: Path, rel: str) -> None:
    import trio

    from vfile.journal.records import Identity, Reason

    st = os.stat(state)  # any identity: retry only needs the entry to exist
    journal = Journal.open(state)
    try:
        trio.run(lambda: journal.defer(rel, Identity.from_stat(st), Reason.MODIFIED,
                                       "default"))
    finally:
        journal.close()


def test_a_stale_witness_of_another_path_does_not_vouch(tmp_path: Path) -> None:
    """The same state directory under a second path (a bind mount, a directory renamed
    and renamed back): each path has its own witness, and the one left behind by an
    earlier run must not vouch for commits that a later run through the other path
    made and the cut took away."""
    src, mnt, disk, statefs = _dirs(tmp_path)
    state, alias = statefs / "state", tmp_path / "alias"
    alias.mkdir()
    cfg = ("--config", str(config(tmp_path)))
    with running_appliance() as app:
        with cutfs(disk, statefs):
            state.mkdir()
            with _bound(state, alias):
                # A clean run through the alias: its witness stays behind on the tmpfs.
                sig = create_and_kill(src, mnt, alias, ("--appliance", app.url, *cfg,
                                                         "--state-dir", str(alias)), subdir="d")
            with mounted(src, mnt, "--appliance", app.url, *cfg, "--state-dir", str(state)):
                pass  # the alias's run was killed: this start does not walk (cache kept)
            with mounted(src, mnt, "--appliance", app.url, *cfg,
                         "--state-dir", str(state)) as server:
                for i in range(FILES):
                    (mnt / "d" / f"late{i}").write_bytes(b"late %d" % i)
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait(10)
        with cutfs(disk, statefs), _bound(state, alias):  # the cut
            lost = [p for p in _created(src, state, sig) if "late" in p]
            assert lost, "the cut lost no intent: nothing to show"
            with mounted(src, mnt, "--appliance", app.url, *cfg, "--state-dir", str(alias)):
                pass
            assert _created(src, state, sig) == []


@contextlib.contextmanager
def _bound(what: Path, where: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(what), str(where)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_state_dir_reused_by_another_source_does_not_end_the_recovery(
        tmp_path: Path) -> None:
    """After the cut, a careless start on ANOTHER source with the same state directory
    must not settle the recovery: the files the lost intents covered are in the first
    source, which the next start on it must still walk (or the other start refuses)."""
    with _after_the_cut(tmp_path) as (src, mnt, state, args, sig):
        other = tmp_path / "other"
        other.mkdir()
        # Refusing to start is fine too.
        with contextlib.suppress(AssertionError), mounted(other, mnt, *args):
            pass
        with mounted(src, mnt, *args):
            pass
        assert _created(src, state, sig) == []


def test_a_clock_stepped_back_does_not_hide_creates_below_the_watermark(
        tmp_path: Path) -> None:
    """A run whose clock was an hour fast advanced the watermark to an hour from now;
    the clock was then stepped back (NTP, a corrected RTC). Creates made since have
    ctimes below W: their intents must not be left to the watermark rule."""
    import trio

    from vfile.journal import watermark

    src, mnt, disk, statefs = _dirs(tmp_path)
    state = statefs / "state"
    args = ("--config", str(config(tmp_path)), "--state-dir", str(state))
    with running_appliance() as app:
        args = ("--appliance", app.url, *args)
        with cutfs(disk, statefs):
            # What that fast run's background sync stored (durably: a tier-1 write).
            ahead = time.time_ns() + 3600 * 10**9
            journal = Journal.open(state)
            try:
                trio.run(lambda: journal._write(
                    lambda txn: watermark.op_advance(txn, journal._t, ahead)))
            finally:
                journal.close()
            sig = create_and_kill(src, mnt, state, args, subdir="d")
        with cutfs(disk, statefs):  # the cut (intents fsynced while behind W survive it)
            with mounted(src, mnt, *args):
                pass
            assert _created(src, state, sig) == []
