"""A run marker torn by a power loss is never read as a clean stop (x24).

The run marker (journal meta `run`) says whether the last run stopped cleanly: `running`
is written durably when a mount starts, `clean` by a clean close. A power loss in the
middle of the fsync of a later commit can leave the meta page pointing at a tree whose
meta leaf was never written: the marker then reads as whatever that page held, an older
tree's `clean` included, or not at all. An absent marker counted as clean (a journal
"new, or written before tier 1w"), and so did a bare `clean` whatever the tree it was
read from: the start neither audited the journal (journal.torn trusted it) nor walked
the source, and a create whose intent the power loss took was never scanned. Now a
clean marker names the transaction that wrote it (`clean:<txnid>`), trusted only when
that is the journal's last transaction; anything else (absent, empty, truncated, an
older one, garbage) is an unclean stop: checked, and walked.

Each case: an outage, files written through the mount, SIGKILL (the marker `running`),
the reboot (the witness on /run gone), a file created in the source that the mount
never journaled (a create whose tier-1w intent the power loss took), the marker as the
tear left it; the next start must walk and leave nothing unaccounted."""

from __future__ import annotations

import time
from pathlib import Path

import lmdb
import pytest
from mounting import mounted
from outage import running_appliance, unaccounted, write_config
from statedisks import durability

from vfile.journal import Journal, tables, watermark

pytestmark = pytest.mark.mount

FILES = 10


def _set_marker(state: Path, marker: bytes | None) -> None:
    env = lmdb.open(str(state), lock=False, max_dbs=tables.MAX_DBS, subdir=True)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            if marker is None:
                txn.delete(watermark.RUN_KEY, db=meta)
            else:
                txn.put(watermark.RUN_KEY, marker, db=meta)
        env.sync(True)
    finally:
        env.close()


@pytest.mark.parametrize("marker", [None, b"", b"runn", b"clean", b"clean:1",
                                    b"\xff\x00garbage"],
                         ids=["absent", "empty", "truncated", "bare-clean", "older-clean",
                              "garbage"])
def test_a_torn_run_marker_means_an_unclean_stop(tmp_path: Path,
                                                 marker: bytes | None) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    with running_appliance(fault="refuse") as app:
        args = ("--appliance", app.url, "--config", str(cfg), "--state-dir", str(state))
        with mounted(src, mnt, *args) as server:
            for i in range(FILES):
                (mnt / f"f{i}").write_bytes(b"written during the outage %d" % i)
            deadline = time.monotonic() + 60
            while durability(mnt)["queued"] or durability(mnt)["in_flight"]:
                assert time.monotonic() < deadline, "the creates' intents never committed"
                time.sleep(0.05)
            server.kill()
        witness = watermark.witness_for(state, None)
        assert witness is not None
        witness.unlink(missing_ok=True)  # the reboot emptied /run
        (src / "lost").write_bytes(b"its create's intent went with the power\n")
        _set_marker(state, marker)
        with mounted(src, mnt, *args) as again:
            text = again.log()
        assert "recovery walk" in text, text[-3000:]
        assert unaccounted(src, state, "") == []
        with Journal.open(state, readonly=True) as j:
            assert j.check() == []
