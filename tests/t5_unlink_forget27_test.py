"""An unlink of a file's last name whose entry the state disk refuses to forget (b27).

`Gate.on_unlink` forgets the entry of a file whose last name is gone (tier 2: a
forgotten unlink leaves an entry whose file is gone, and the drain drops it). The
unlink itself is already made on the source when that record is written; a state
disk refusing it (full) made the handler answer EIO for a file that was gone: the
caller would retry, or think the file still there. Now the unlink succeeds, the
refusal is logged, and the drain drops the entry once the disk takes writes again.

Through a real mount, its state directory on `tests/cutfs.py` (`write_fault`: every
write ENOSPC).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cutfs import write_fault
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import deferred_paths, running_appliance
from powercut import cut_dirs
from queuedrace import DEADLINE, wait_settled
from statedisks import cutfs

pytestmark = pytest.mark.mount


def test_unlink_of_a_last_name_whose_entry_cannot_be_forgotten(tmp_path: Path) -> None:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    tree = Tree(tmp_path, src, mnt, statefs / "state")
    with running_appliance() as app, cutfs(disk, statefs):
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(src, mnt, "--config", str(conf)) as server:
            app.set_fault("refuse")  # written, never judged: an entry for each
            names = ["a", "b"]
            for n in names:
                (mnt / n).write_bytes(f"unjudged {n}\n".encode())
            wait_settled(mnt)
            wait_until(lambda: deferred_paths(tree.state) == names, "the entries", DEADLINE)
            errors: list[str] = []
            write_fault(disk).touch()
            try:
                for n in names:
                    try:
                        os.unlink(mnt / n)
                    except OSError as err:
                        errors.append(f"{n}: {err!r}")
            finally:
                write_fault(disk).unlink()
            gone = [n for n in names if not (src / n).exists()]
            log = server.log()
            # The unlinks were made; before the fix each answered EIO all the same.
            assert (errors, gone) == ([], names), log[-3000:]
            assert "cannot forget the entry of 'a'" in log, log[-3000:]
            app.set_fault("none")
            # The entries of the gone files are dropped by the drain.
            wait_until(lambda: deferred_paths(tree.state) == [], "the entries dropped",
                       DEADLINE)
            assert not (mnt / "a").exists()
