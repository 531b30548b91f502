"""Attack review x22: the damaged-journal rebuild (journal/torn.py) interrupted or refused.

A journal the integrity check calls damaged is moved aside, salvaged, replaced by a fresh
one and every file of the source walked before the mount serves. The journal here is
damaged the simplest way the check sees (its meta table's magic overwritten with the
mount stopped); a torn fsync (tests/t5_torn_journal_test.py) reaches the same code.
- A start killed after the move-aside but before its walk (systemd's start timeout over
  a long salvage, a second power cut, an operator's Ctrl-C) left the next start a fresh
  journal that says nothing happened: no entry, no walk, every file written during the
  outage with neither an entry nor a verdict.
- A move-aside the state directory refuses was reported as a lock-file error.
- (Review r22) A start resumed by `rebuild-pending` salvaged the aside journal again but
  never checked the one in place, the fresh journal its killed start was filling: torn
  by a second power cut, it was refused at this and every later start.
- (t23) A marker left after a finished rebuild (its unlink failed) made every later start
  salvage and restore the aside journal again: quarantine records deleted since came back.
- (t23) The rebuild did not salvage the taint table: an inode found infected was
  forgotten, and once its entry was drained a window or an outage served it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
import trio
from mounting import mounted, stop_process, vfile_cmd
from outage import running_appliance, unaccounted, write_config
from statedisks import durability, fill, frozen, loop_ext4

from vfile.journal import Journal, tables, taint, torn
from vfile.journal.records import Identity, QuarantineRecord

pytestmark = pytest.mark.mount

FILES = 100


def _outage_files(src: Path, mnt: Path, args: tuple[str, ...]) -> None:
    """FILES files written through the mount during an outage: each has an entry only."""
    with mounted(src, mnt, *args):
        for i in range(FILES):
            (mnt / f"f{i:03d}").write_bytes(b"written during the outage %d" % i)
        deadline = time.monotonic() + 60
        while durability(mnt)["queued"] or durability(mnt)["in_flight"]:
            assert time.monotonic() < deadline, "the creates' intents never committed"
            time.sleep(0.05)


def _damage(state: Path) -> None:
    """The check's verdict on a torn tree: the meta table lost vfile's magic."""
    env = lmdb.open(str(state), lock=False, max_dbs=tables.MAX_DBS, subdir=True)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            txn.put(b"magic", b"garbage", db=meta)
        env.sync(True)
    finally:
        env.close()


def _aside(state: Path) -> list[Path]:
    return [p for p in state.iterdir() if p.name.startswith(torn.ASIDE_PREFIX)]


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[Path, Path, tuple[str, ...]]]:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    with running_appliance(fault="refuse") as app:
        yield src, mnt, ("--appliance", app.url, "--config", str(cfg))


def test_a_rebuild_killed_before_its_walk_is_done_again(
        tmp_path: Path, outage: tuple[Path, Path, tuple[str, ...]]) -> None:
    src, mnt, args = outage
    with loop_ext4(tmp_path) as statefs:
        state = statefs / "state"
        args = (*args, "--state-dir", str(state))
        _outage_files(src, mnt, args)
        _damage(state)
        # The rebuild starts; the state disk stops taking writes once the journal is
        # moved aside (the salvage, the fresh journal, the walk still to come), and the
        # start is killed there.
        proc = subprocess.Popen(vfile_cmd("mount", "--foreground", *args, "--", str(src),
                                          str(mnt)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while (state / "data.mdb").exists():  # moved aside (the salvage is a child)
                assert proc.poll() is None, f"the start exited with {proc.returncode}"
                assert time.monotonic() < deadline, "the journal was never moved aside"
                time.sleep(0.001)
            with frozen(statefs):
                proc.kill()
        finally:
            stop_process(proc)
        with mounted(src, mnt, *args, "-v") as server:
            text = server.log()
        assert unaccounted(src, state, "") == []
        assert "journal damaged" in text, text
        assert "did not finish rebuilding" in text, text
        assert not (state / torn.PENDING).exists()  # done: the next start need not redo it
        assert len(_aside(state)) == 1


def test_a_move_aside_refused_is_not_called_a_lock_file_error(
        tmp_path: Path, outage: tuple[Path, Path, tuple[str, ...]]) -> None:
    src, mnt, args = outage
    state = tmp_path / "state"
    args = (*args, "--state-dir", str(state))
    _outage_files(src, mnt, args)
    _damage(state)
    subprocess.run(["chattr", "+i", str(state)], check=True)  # root cannot add a name
    try:
        done = subprocess.run(vfile_cmd("mount", "--foreground", *args, "--", str(src),
                                        str(mnt)),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                              check=False)
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 7, err
    assert "lock file" not in err, err
    assert "damaged" in err and "aside" in err, err
    assert "Traceback" not in err, err
    # Nothing was lost: the damaged journal is still there for the next start.
    with mounted(src, mnt, *args):
        pass
    assert unaccounted(src, state, "") == []


def test_a_full_state_disk_stops_the_rebuild_before_anything_moves(
        small_state: Path, outage: tuple[Path, Path, tuple[str, ...]]) -> None:
    """The move-aside needs no room, the fresh journal does: the start moved the journal,
    then died of SIGBUS creating the new one on the full tmpfs (LMDB's mmap), leaving
    the next start (room made) a fresh journal and no walk. Now it stops before the
    move, exit 7 naming it."""
    src, mnt, args = outage
    state = small_state / "state"
    args = (*args, "--state-dir", str(state))
    _outage_files(src, mnt, args)
    _damage(state)
    fill(small_state)
    done = subprocess.run(vfile_cmd("mount", "--foreground", *args, "--", str(src), str(mnt)),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                          check=False)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 7, err
    assert "cannot be moved aside" in err and "Traceback" not in err, err
    (small_state / "filler").unlink()  # the operator makes room
    with mounted(src, mnt, *args, "-v") as server:
        text = server.log()
    assert unaccounted(src, state, "") == []
    assert "journal damaged" in text, text


def test_a_resumed_rebuild_checks_the_journal_its_killed_start_left(
        tmp_path: Path, outage: tuple[Path, Path, tuple[str, ...]]) -> None:
    src, mnt, args = outage
    state = tmp_path / "state"
    args = (*args, "--state-dir", str(state))
    _outage_files(src, mnt, args)
    # What a start killed mid-walk by a second power cut leaves: the first damaged journal
    # aside and named by the marker (torn._move_aside_and_salvage's own steps), and in
    # place the fresh journal it was filling, torn in turn.
    _damage(state)
    aside = state / (torn.ASIDE_PREFIX + "20260101T000000Z")
    aside.mkdir(mode=0o700)
    shutil.copy2(state / "data.mdb", aside / "data.mdb")
    (state / torn.PENDING).write_text(aside.name + "\n")
    # The start must serve (moving the torn fresh journal aside too, or rebuilding it),
    # not refuse the journal its own earlier start created, at this and every start.
    with mounted(src, mnt, *args, "-v") as server:
        text = server.log()
    assert unaccounted(src, state, "") == [], text


def _offline(state: Path, fn: object) -> object:
    """`fn(journal)` (a coroutine function) on the journal, the mount stopped."""
    async def run() -> object:
        j = Journal.open(state)
        try:
            return await fn(j)  # type: ignore[operator]
        finally:
            j.close()
    return trio.run(run)


def _quarantine_ids(state: Path) -> set[str]:
    j = Journal.open(state, readonly=True)
    try:
        return {q.id for q in j.list_quarantine()}
    finally:
        j.close()


def test_a_marker_left_after_a_finished_rebuild_resurrects_nothing(
        tmp_path: Path, outage: tuple[Path, Path, tuple[str, ...]]) -> None:
    src, mnt, args = outage
    state = tmp_path / "state"
    args = (*args, "--state-dir", str(state))
    _outage_files(src, mnt, args)

    async def quarantine(j: Journal) -> None:
        for qid in ("q1", "q2"):
            await j.add_quarantine(QuarantineRecord(qid, f"gone/{qid}", f"/q/{qid}", "Eicar",
                                                    2.0, Identity(1, 2, 3, 4, 5), "default"))
    _offline(state, quarantine)
    _damage(state)
    with mounted(src, mnt, *args, "-v") as server:
        assert "journal damaged" in server.log()
    assert _quarantine_ids(state) == {"q1", "q2"}
    aside = _aside(state)
    assert len(aside) == 1 and not (state / torn.PENDING).exists()
    # What an unlink of the marker that failed after the walk leaves (the mount logs "cannot
    # clear"): the marker, naming the aside journal. Then the administrator deletes q1.
    (state / torn.PENDING).write_text(aside[0].name + "\n")

    async def delete(j: Journal) -> None:
        await j.remove_quarantine("q1")
    _offline(state, delete)
    with mounted(src, mnt, *args, "-v") as server:
        text = server.log()
    assert _quarantine_ids(state) == {"q2"}, text  # q1 stays deleted
    assert "did not finish rebuilding" not in text, text
    assert not (state / torn.PENDING).exists(), text
    assert unaccounted(src, state, "") == []


def test_the_rebuild_salvages_the_taint_table(
        tmp_path: Path, outage: tuple[Path, Path, tuple[str, ...]]) -> None:
    src, mnt, args = outage
    state = tmp_path / "state"
    args = (*args, "--state-dir", str(state))
    _outage_files(src, mnt, args)
    st = (src / "f007").stat()
    rec = taint.TaintRecord(st.st_dev, st.st_ino, st.st_size, "ab" * 32, "Eicar", 2.0)

    async def put(j: Journal) -> None:
        await j.put_taint(rec)
    _offline(state, put)
    _damage(state)
    with mounted(src, mnt, *args, "-v") as server:
        text = server.log()
    assert "journal damaged" in text, text
    j = Journal.open(state, readonly=True)
    try:
        assert j.get_taint(st.st_dev, st.st_ino) == rec, text
    finally:
        j.close()
    assert unaccounted(src, state, "") == []
