"""A last close while another writer's open is still writing its intent (loss21).

Found in tests/stress_queued_race.py's logs: a writer held a file open; another
thread opened it again with O_TRUNC, whose intent (tier 1) waited for the state disk;
the first writer's last close (its RELEASE comes after close(2) returns) reached the
server meanwhile and took that new intent (current
for the path, its record not written yet) and started a close scan with it, which
ended it. The second writer's open then went on, truncated and wrote with no intent
in memory: the drain, no longer told "still being written", scanned the file before
those bytes arrived and removed the entry, and the file had neither entry nor verdict.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from lifecycle import Tree, wait_until
from outage import signature_version, status, unaccounted
from queuedrace import (
    DEADLINE,
    frozen_until_thawed,
    server_on_loop_disk,
    settled,
    waiting_in_kernel,
)

from vfile.journal import Journal

pytestmark = pytest.mark.mount


def _attempts(state: Path, name: str) -> int | None:
    with Journal.open(state, readonly=True) as j:
        e = j.get_deferred(name)
        return None if e is None else e.attempts


def test_last_close_leaves_an_open_in_progress_its_intent(tree: Tree) -> None:
    mnt = tree.mountpoint
    with server_on_loop_disk(tree, lambda mnt: None) as (state, _args, server):
        first = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(first, b"the first writer's bytes\n")
        wait_until(lambda: status(mnt)["journal"]["durability"]["in_flight"] == 0,
                   "the create's intent committed", DEADLINE)
        second: list[int] = []
        tid: list[int] = []

        def reopen() -> None:
            tid.append(threading.get_native_id())
            second.append(os.open(mnt / "f", os.O_WRONLY))

        with frozen_until_thawed(state) as thaw:
            th = threading.Thread(target=reopen, daemon=True)
            th.start()  # its intent waits for the frozen disk (no O_TRUNC: with it the
            # kernel locks the inode for the open, and the close below would wait)
            wait_until(lambda: tid and waiting_in_kernel(tid[0]), "the open waits", DEADLINE)
            os.close(first)  # the last close of the first writer, while the open waits
            # A request behind its RELEASE: the server has taken that close by now.
            os.close(os.open(mnt / "g", os.O_CREAT | os.O_WRONLY, 0o644))
            thaw()
            th.join(DEADLINE)
            assert second, "the second open did not return"
        try:
            before = _attempts(state, "f")
            wait_until(lambda: before is None or _attempts(state, "f") != before,
                       "the drain looked at f", DEADLINE)
            os.write(second[0], b"the second writer's bytes, after the drain looked\n")
        finally:
            os.close(second[0])
        try:
            wait_until(lambda: settled(mnt), "every intent ended", DEADLINE)
        except AssertionError:
            raise AssertionError(f"still pending: {status(mnt)['gate']}\n"
                                 f"{server.log()[-3000:]}") from None
        assert (tree.source / "f").read_bytes().startswith(b"the second writer's bytes")
        assert unaccounted(tree.source, state, signature_version(state)) == []
