"""A metadata change while a scan of the file is under way (loss22).

A chmod, chown or utimens gives a file a new ctime, so a new identity; the gate
keeps the old verdict for it or journals the file (filter.keeping). With a write
intent pending it did nothing, trusting the writer's close scan to judge the file
later. But a close scan that had already read the file (its completion waiting for
the journal) then resolved the entry with a verdict for the identity before the
change: the file had neither. Through the mount such a SETATTR comes from anyone,
and from the kernel itself: with the writeback cache it updates its own copy of a
file's times on a link, unlink or rename and sends them back some time later.
(The suspect for t5_race21_dirs_test.py's link case, which failed 1 run in 3.)
Here the state disk is frozen so the close scan's completion waits while the file
is chmod'ed.
"""

from __future__ import annotations

import os

import pytest
from lifecycle import Tree, wait_until
from outage import signature_version, status, unaccounted
from queuedrace import DEADLINE, frozen_until_thawed, in_thread, server_on_loop_disk, wait_settled

pytestmark = pytest.mark.mount


def test_a_chmod_after_the_close_scan_read_the_file(tree: Tree) -> None:
    mnt = tree.mountpoint
    with server_on_loop_disk(tree, lambda mnt: None) as (state, _args, _server):
        fd = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"the file's bytes\n")
        wait_until(lambda: status(mnt)["journal"]["durability"]["in_flight"] == 0,
                   "the create's intent committed", DEADLINE)
        cached = status(mnt)["gate"]["cached_verdicts"]
        errors: list[str] = []
        with frozen_until_thawed(state) as thaw:
            os.close(fd)  # its close scan reads the file; its completion waits
            # Its verdict is cached once its completion is queued (filter.closing).
            wait_until(lambda: status(mnt)["gate"]["cached_verdicts"] > cached,
                       "the close scan judged the file", DEADLINE)
            # Done, or waiting for the frozen journal (the fix keeps the verdict for the
            # new identity, or journals the file).
            th = in_thread(lambda: os.chmod(mnt / "f", 0o600), errors)
            thaw()
            th.join(DEADLINE)
            assert not th.is_alive()
        assert errors == []
        wait_settled(mnt)
        sig = signature_version(state)
        assert unaccounted(tree.source, state, sig) == []
