"""An infected file whose verdicts were dropped while it lives on is not served (a29).

m27 drops a file's verdicts when an unlink takes its last name, and a29 when a
rename over it does; both read the link count before the operation, so a link(2)
made in between (behind the mount, or through it) can leave the file alive under
another name with its verdicts gone. For a clean file that costs a scan. For an
infected one it must cost nothing more: the taint record (journal.taint, by
inode, kept whatever the names) still denies it, with no appliance at all.

The race's outcome made deterministic: found infected through a mount, linked
behind it as `keep`, its verdicts dropped from the journal while unmounted (what
a lost race leaves), remounted with the appliance refusing: `keep` is denied, in
a window too. And the neighbour through the mount: the last name renamed over
(a29's new drop) while `keep` holds the file.
"""

from __future__ import annotations

import errno
import os

import pytest
import trio
from escaping import escape_mount, quiesced, read_errno
from lifecycle import Tree

from vfile.journal.store import Journal
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount


def test_infected_with_its_verdicts_dropped_is_still_denied(tree: Tree) -> None:
    mnt, src = tree.mountpoint, tree.source
    with escape_mount(tree):
        (src / "bad").write_bytes(EICAR)
        assert read_errno(mnt / "bad")[0] == errno.EACCES  # found infected: denied
        os.link(src / "bad", src / "keep")  # behind the mount
        st = os.stat(src / "keep")
    journal = Journal.open(tree.state)
    try:
        dropped = trio.run(journal.drop_verdicts_of, [(st.st_dev, st.st_ino)])
        assert dropped >= 1  # the infected verdict was stored, and is gone now
        assert journal.get_taint(st.st_dev, st.st_ino) is not None
    finally:
        journal.close()
    with escape_mount(tree, "refuse"):
        assert read_errno(mnt / "keep")[0] == errno.EACCES
        with quiesced(mnt):
            assert read_errno(mnt / "keep")[0] == errno.EACCES
            assert read_errno(mnt / "bad")[0] == errno.EACCES


def test_infected_renamed_over_while_linked_is_still_denied(tree: Tree) -> None:
    mnt, src = tree.mountpoint, tree.source
    with escape_mount(tree):
        (src / "bad").write_bytes(EICAR)
        assert read_errno(mnt / "bad")[0] == errno.EACCES
        (mnt / "new").write_bytes(b"clean\n")
        os.link(src / "bad", src / "keep")
        os.rename(mnt / "new", mnt / "bad")  # bad's name taken; the file lives as keep
        assert read_errno(mnt / "bad") == (0, b"clean\n")
        with quiesced(mnt):
            assert read_errno(mnt / "keep")[0] == errno.EACCES
