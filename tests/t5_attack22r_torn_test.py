"""Review r22 of x22's resumable rebuild (journal/torn.py `_resume`).

A start that finds `rebuild-pending` salvages the aside journal again and returns at once:
the journal now in place, the fresh one the killed start created and was filling (its
restore, its walk), is never checked. The marker exists precisely because that start was
cut short, and "a second power cut" is one of the ways (torn.py's own doc): the fresh
journal is then as likely torn as the first one was. The next start opened it unchecked
(here: refused, every start after it the same, the mount never serves again).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from mounting import mounted
from outage import running_appliance, unaccounted, write_config
from statedisks import durability

from vfile.journal import tables, torn

pytestmark = pytest.mark.mount

FILES = 20


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


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[Path, Path, tuple[str, ...]]]:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    with running_appliance(fault="refuse") as app:
        yield src, mnt, ("--appliance", app.url, "--config", str(cfg))


def test_a_resumed_rebuild_checks_the_journal_its_killed_start_left(
        tmp_path: Path, outage: tuple[Path, Path, tuple[str, ...]]) -> None:
    src, mnt, args = outage
    state = tmp_path / "state"
    args = (*args, "--state-dir", str(state))
    with mounted(src, mnt, *args):
        for i in range(FILES):
            (mnt / f"f{i:03d}").write_bytes(b"written during the outage %d" % i)
        deadline = time.monotonic() + 60
        while durability(mnt)["queued"] or durability(mnt)["in_flight"]:
            assert time.monotonic() < deadline, "the creates' intents never committed"
            time.sleep(0.05)
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
