"""An extended attribute set or removed through the mount gives a file a new ctime, as
a chmod does (x23): a new identity. The verdict must follow it (the content did not
change), or the file be journaled: never neither (DESIGN "Crash safety").

Without the writeback cache: with it the kernel, after a SETXATTR, sends the ctime it
keeps as a SETATTR of its own, and that (a metadata change) journals the file, so the
hole was closed there by chance (as in tests/t5_race22_linkctime_test.py)."""

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
)
from queuedrace import DEADLINE, wait_settled

pytestmark = pytest.mark.mount

SAFE = '[[profile]]\nname = "default"\nfail_mode = "safe"\n'


@pytest.mark.parametrize("writeback", [False, True])
def test_an_xattr_change_keeps_the_verdict(tree: Tree, writeback: bool) -> None:
    mnt, state = tree.mountpoint, tree.state
    extra = () if writeback else ("-o", "no_writeback")
    with running_appliance() as app:
        conf = tree_config(tree, app, SAFE)
        with mounted(tree.source, mnt, "--config", str(conf), *extra):
            for name in ("set", "removed", "held"):
                (mnt / name).write_bytes(f"{name}: a plain file\n".encode())
            os.setxattr(mnt / "removed", "user.k", b"1")
            wait_settled(mnt)
            wait_until(lambda: signature_version(state), "the signature version")
            sig = signature_version(state)
            wait_until(lambda: deferred_paths(state) == [], "the drain emptied the journal",
                       DEADLINE)
            assert unaccounted(tree.source, state, sig) == []
            ctimes = {n: os.stat(tree.source / n).st_ctime_ns for n in ("set", "removed")}
            os.setxattr(mnt / "set", "user.k", b"v")
            os.removexattr(mnt / "removed", "user.k")
            fd = os.open(mnt / "held", os.O_RDONLY)  # by an open handle's descriptor too
            try:
                os.setxattr(fd, "user.k", b"v")
            finally:
                os.close(fd)
            wait_settled(mnt)
            assert all(os.stat(tree.source / n).st_ctime_ns != c for n, c in ctimes.items())
            assert os.getxattr(tree.source / "held", "user.k") == b"v"
            assert unaccounted(tree.source, state, sig) == []
