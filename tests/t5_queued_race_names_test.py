"""A writer's last close ends every intent its file has, under any of its names.

The stuck intent of tests/stress_queued_race.py (s23, traced): a file with several
names can have an intent under two of them at once. The intent of an open or a
truncate is made under the name the server knows the file by (`path_of`: once its
first name is gone, the name the kernel last looked it up by), an unlink moves an
intent to a surviving name chosen the same way, and between the two the kernel can
look the file up by a third. The last close then found the intent under its name of
the moment and scanned that one; the other stayed pending forever (the drain
answered "still being written" until it poisoned the entry).
"""

from __future__ import annotations

import os

import pytest
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, signature_version, unaccounted
from queuedrace import wait_settled

pytestmark = pytest.mark.mount


def test_last_close_ends_the_intents_under_every_name(tree: Tree) -> None:
    mnt = tree.mountpoint
    with running_appliance() as app:
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        # Every access looks the name up again: the server sees which name it came by.
        with mounted(tree.source, mnt, "--config", str(conf), "--cache-timeout", "0"):
            fd = os.open(mnt / "a", os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                os.write(fd, b"first bytes\n")
                os.link(mnt / "a", mnt / "l1")
                os.link(mnt / "a", mnt / "l2")
                os.unlink(mnt / "a")  # its intent moves to the newest name, l2
                os.stat(mnt / "l1")  # l1 is now the name the file was last looked up by
                # An intent under l1 (where the server knows the file now), the writer's
                # still under l2.
                os.close(os.open(mnt / "l1", os.O_WRONLY | os.O_TRUNC))
                os.write(fd, b"more bytes\n")
            finally:
                os.close(fd)
            wait_settled(mnt)
            wait_until(lambda: signature_version(tree.state), "the signature version")
            sig = signature_version(tree.state)
        assert unaccounted(tree.source, tree.state, sig) == []
