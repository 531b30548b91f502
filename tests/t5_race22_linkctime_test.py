"""Taking one name from a hard-linked file changes the surviving name's identity (loss22).

The kernel updates an inode's ctime when its link count drops, so an unlink of one
name of a file with two, or a rename onto one of them, gives the file that lives on
under the other name a new identity. A verdict taken before (the close scan after
the link, or any earlier one) no longer matched it, and the survivor had no entry
either: neither, until its next open scanned it again (README Limitations, "nothing
lost under racing name operations", (5); seen in tests/t5_queued_race_test.py under
stress-ng as `link/l`). The content did not
change, so the verdict now follows the file to its new identity, as a chmod's does.
"""

from __future__ import annotations

import os

import pytest
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import (
    deferred_paths,
    running_appliance,
    signature_version,
    unaccounted,
    verdict_outcome,
)
from queuedrace import DEADLINE, wait_settled

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

SAFE = '[[profile]]\nname = "default"\nfail_mode = "safe"\n'


@pytest.mark.parametrize("how", ["unlink", "rename_over"])
def test_the_surviving_name_keeps_its_verdict(tree: Tree, how: str) -> None:
    mnt, state = tree.mountpoint, tree.state
    with running_appliance() as app:
        conf = tree_config(tree, app, SAFE)
        # Without the writeback cache: with it the kernel, which updated its own copy of
        # the ctime, sends it back as a SETATTR some time later, and that (a metadata
        # change with no verdict for the identity before) journals the file: the hole
        # was open only until then.
        with mounted(tree.source, mnt, "--config", str(conf), "-o", "no_writeback"):
            (mnt / "z").write_bytes(b"another file\n")
            (mnt / "a").write_bytes(b"a file with two names\n")
            os.link(mnt / "a", mnt / "b")
            wait_settled(mnt)
            wait_until(lambda: signature_version(state), "the signature version")
            sig = signature_version(state)
            wait_until(lambda: deferred_paths(state) == [], "the drain emptied the journal",
                       DEADLINE)
            assert verdict_outcome(state, tree.source, "b", sig) == "clean"  # the link's close scan
            ctime = os.stat(tree.source / "b").st_ctime_ns
            if how == "unlink":
                os.unlink(mnt / "a")
            else:
                os.rename(mnt / "z", mnt / "a")
            wait_settled(mnt)
            assert os.stat(tree.source / "b").st_ctime_ns != ctime  # the kernel's doing
            assert unaccounted(tree.source, state, sig) == []
            # Not by a rescan: the verdict followed the file (no entry was needed).
            assert "b" not in deferred_paths(state)
            assert verdict_outcome(state, tree.source, "b", sig) == "clean"


def test_a_survivor_written_meanwhile_is_judged_again(tree: Tree) -> None:
    """The verdict follows only content that provably did not change: a writer holding
    the file across the unlink keeps its intent, and its close scan judges the file."""
    mnt = tree.mountpoint
    with running_appliance() as app:
        conf = tree_config(tree, app, SAFE)
        with mounted(tree.source, mnt, "--config", str(conf)):
            (mnt / "a").write_bytes(b"a file with two names\n")
            os.link(mnt / "a", mnt / "b")
            wait_settled(mnt)
            fd = os.open(mnt / "b", os.O_WRONLY)
            try:
                os.unlink(mnt / "a")
                os.write(fd, EICAR + b"\n")
            finally:
                os.close(fd)
            # Infected: quarantined (the default action), not kept as clean.
            wait_until(lambda: not (tree.source / "b").exists(), "b quarantined", DEADLINE)
