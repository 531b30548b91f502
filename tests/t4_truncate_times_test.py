"""A truncate with no writer open, on a writeback-cache mount, is scanned once.

With the writeback cache the kernel keeps a file's times itself and sends them with
the truncate, in the same SETATTR (size, mtime, ctime). The truncate's intent was
closed (its close scan started) before those times were set, so the times' change
met a claimed intent and journaled the file again (filter.keeping: a scan in flight
may have read it before the change): one more scan by the drain for every truncate
(loss22's cost). The times are now set before the truncate's close scan starts, which
then reads the file as the request left it.
"""

from __future__ import annotations

import os

import pytest
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, signature_version, status, unaccounted
from queuedrace import DEADLINE, wait_settled

pytestmark = pytest.mark.mount


def _drained(mnt: os.PathLike[str]) -> int:
    return sum(status(mnt)["drain"]["done"].values())


def test_a_truncate_without_a_writer_is_not_journaled_again(tree: Tree) -> None:
    mnt = tree.mountpoint
    with running_appliance() as app:
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(tree.source, mnt, "--config", str(conf)):
            for i in range(5):
                (mnt / f"f{i}").write_bytes(b"some bytes of file %d\n" % i)
            wait_settled(mnt)
            wait_until(lambda: status(mnt)["journal"]["deferred"] == 0, "no entry", DEADLINE)
            before = _drained(mnt)
            for i in range(5):
                os.truncate(mnt / f"f{i}", 4)  # no writer open
            wait_settled(mnt)
            wait_until(lambda: status(mnt)["journal"]["deferred"] == 0, "no entry", DEADLINE)
            # Each truncate's close scan resolved its entry; the drain scanned nothing.
            assert _drained(mnt) == before
            wait_until(lambda: signature_version(tree.state), "the signature version")
            assert unaccounted(tree.source, tree.state, signature_version(tree.state)) == []
