"""Tier 1w's bookkeeping (journal.watermark): the recovery rule, the run marker, the
watermark and the witness, on a real LMDB environment (no mount)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vfile.journal import Identity, Journal, Reason, tables, watermark
from vfile.journal.environment import lock_target

BOOT = "98a9685e-11bc-421d-93bb-8341ecee3926"


def seen(boot: str, txnid: int) -> watermark.Seen:
    """What the witness of the run that left `running` saw."""
    return watermark.Seen(boot, txnid, watermark.RUNNING)


@pytest.mark.parametrize(("run", "seen", "txnid", "walk"), [
    (tables.clean_marker(5), None, 5, False),     # clean stop: nothing to recover
    (tables.clean_marker(4), None, 5, True),      # an older tree's clean marker (x24)
    (None, None, 5, True),                        # a torn tree lost it (x24)
    (watermark.CLEAN, None, 5, True),             # an older vfile's, or a stale page's
    (b"", None, 5, True),                         # torn
    (b"clean:", None, 5, True),                   # torn
    (watermark.RUNNING, None, 5, True),           # unclean, no witness (a reboot emptied /run)
    (watermark.RUNNING, seen(BOOT, 5), 5, False),   # SIGKILL: nothing lost
    (watermark.RUNNING, seen(BOOT, 4), 5, False),   # killed between commit and note
    (watermark.RUNNING, seen(BOOT, 6), 5, True),    # a commit the disk lost
    (watermark.RUNNING, watermark.Seen(BOOT, 5, b"running:other"), 5, True),  # another run's
    (watermark.RUNNING, seen("other-boot", 5), 5, True),  # a reboot, /run on disk
])
def test_the_recovery_rule(run: bytes | None, seen: watermark.Seen | None, txnid: int,
                           walk: bool) -> None:
    assert watermark.decide(run, 123, seen, BOOT, txnid).walk is walk
    assert watermark.decide(run, 123, seen, "", txnid).walk is (
        not watermark.stopped_cleanly(run, txnid))


async def test_run_marker_watermark_and_witness(tmp_path: Path) -> None:
    state, locks = tmp_path / "state", tmp_path / "locks"
    j = Journal.open(state, lock_dir=locks)
    try:
        found = await j.begin_run()
        assert found.clean and not found.walk and found.watermark_ns is None
        before = time.time_ns()
        await j.defer("new", None, Reason.MODIFIED, "default", durable=False)  # tier 1w
        assert j.durability()["unsynced_commits"] == 1
        assert await j.advance_watermark()
        mark = j.watermark_ns()
        assert mark is not None and mark <= before - watermark.MARGIN_NS + 10**9
        assert j.durability()["unsynced_commits"] == 0
        assert not await j.advance_watermark()  # nothing committed since: no fsync
        assert j.watermark_ns() == mark
        seen = watermark.Witness.read(watermark.witness_path(lock_target(state, locks)))
        assert seen is not None and seen.boot == watermark.boot_id() and seen.txnid > 0
    finally:
        j.close()  # clean: the marker says so
    j = Journal.open(state, lock_dir=locks)
    try:
        found = await j.begin_run()
        assert found.clean and found.watermark_ns == mark
        await j.defer("again", Identity(1, 2, 3, 4, 5), Reason.MODIFIED, "default",
                      durable=False)
        # A crash now (no close): the next start sees an unclean stop whose page
        # cache survived (the witness saw nothing the journal lacks).
        j._running = False  # what close() must not mark clean, as after a SIGKILL
    finally:
        j.close()
    j = Journal.open(state, lock_dir=locks)
    try:
        found = await j.begin_run()
        assert not found.clean and found.cache_survived and not found.walk
    finally:
        j._running = False
        j.close()
    # The state disk lost the last commits (the witness is ahead): walk.
    path = watermark.witness_path(lock_target(state, locks))
    seen = watermark.Witness.read(path)
    assert seen is not None
    w = watermark.Witness(path, seen.run)
    w.record(seen.txnid + 3)
    w.close()
    j = Journal.open(state, lock_dir=locks)
    try:
        found = await j.begin_run()
        assert found.walk and found.watermark_ns == mark
    finally:
        j.close()
