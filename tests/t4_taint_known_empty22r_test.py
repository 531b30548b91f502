"""Review r22 of cr22's "taint table known empty" (journal/store.py `get_taint`).

`get_taint` remembers an empty table until the journal's next taint write, and reads the
table while one is under way (`_taint_writes`). A `put_taint` whose caller is cancelled
(the drain's scan deadline, a request's) after the committer took its batch is still
written, later; but the count drops when the caller leaves. A `get_taint` in between
reads the snapshot before that commit, finds the table empty and remembers it: the taint
then lands and is never read again until some other taint write, so the inode found
infected is opened by its next `touch`ed identity as if never found infected (issue 13).
The state disk here is frozen to hold the commit; a slow one does the same for less time.
"""

from __future__ import annotations

import time
from pathlib import Path

import trio
from statedisks import frozen, loop_ext4

from vfile.journal import Journal, taint
from vfile.journal.taint import TaintRecord


async def test_a_taint_written_after_its_caller_gave_up_is_still_seen(tmp_path: Path) -> None:
    locks = tmp_path / "locks"  # LMDB's lock file off the frozen disk: reads go on
    locks.mkdir()
    with loop_ext4(tmp_path) as fs:
        j = Journal.open(fs / "state", lock_dir=locks)
        try:
            rec = TaintRecord(7, 42, 68, "", "Eicar-Test-Signature", time.time())
            with frozen(fs):
                with trio.move_on_after(2.0):  # the caller's deadline
                    await j.put_taint(rec)
                # The commit is under way in the writer thread (blocked on the disk).
                assert j.get_taint(7, 42) is None  # not committed yet: fine
            deadline = time.monotonic() + 60
            while j._read(lambda txn: taint.get(txn, j._taint_db, 7, 42)) is None:
                assert time.monotonic() < deadline, "the taint was never committed"
                await trio.sleep(0.05)
            # Committed: the inode is known infected, and get_taint must say so.
            assert j.get_taint(7, 42) == rec
        finally:
            j.close()
