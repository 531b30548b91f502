"""Attack review a29: a rename whose journal record the state disk refuses.

b27 made an unlink whose entry the state disk refuses to forget succeed (logged; the
drain drops the entry of a gone file): the unlink is made on the source when that
record is written. A rename of a file with an entry is the same: the entry follows
the file to its new name after the rename is made (`Gate.on_rename`), and its intent
before it: were that intent spared a commit (the entry is there already), the
rename would be made and answered EIO. Held: the intent's commit is refused first,
so the rename is refused and not made (EIO, the files where they were), and made
once the disk takes writes again. Through a real mount, its state directory on
`tests/cutfs.py` (`write_fault`: every write ENOSPC).
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


def test_rename_of_a_file_whose_entry_cannot_follow(tmp_path: Path) -> None:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    tree = Tree(tmp_path, src, mnt, statefs / "state")
    with running_appliance() as app, cutfs(disk, statefs):
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(src, mnt, "--config", str(conf)):
            app.set_fault("refuse")  # written, never judged: an entry for each
            for n in ("a", "b"):
                (mnt / n).write_bytes(f"unjudged {n}\n".encode())
            wait_settled(mnt)
            wait_until(lambda: deferred_paths(tree.state) == ["a", "b"], "the entries",
                       DEADLINE)
            outcome: dict[str, str] = {}
            write_fault(disk).touch()
            try:
                for old, new in (("a", "a2"), ("b", "a")):
                    try:
                        os.rename(mnt / old, mnt / new)
                        outcome[old] = "ok"
                    except OSError as err:
                        outcome[old] = f"{err!r}"
            finally:
                write_fault(disk).unlink()
            made = {n: (src / n).exists() for n in ("a", "a2", "b")}
            # Refused and not made: never made and answered with an error.
            assert made == {"a": True, "a2": False, "b": True}, (outcome, made)
            assert all("Errno 5" in x or "(5," in x for x in outcome.values()), outcome
            os.rename(mnt / "a", mnt / "a2")
            os.rename(mnt / "b", mnt / "a")
            wait_until(lambda: sorted(deferred_paths(tree.state)) == ["a", "a2"],
                       f"the entries moved ({deferred_paths(tree.state)})", DEADLINE)
            assert (mnt / "a").read_bytes() == b"unjudged b\n"  # safe: served, journaled
