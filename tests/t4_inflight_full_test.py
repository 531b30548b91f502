"""A create's intent queued in the background (journal.inflight) whose commit
fails (a full state disk) is never dropped: the create has gone on, so the
intent is retried until the disk takes it, and meanwhile creates wait for their
own intents again and fail with EIO, as before. Through a real mount whose
state directory is on a small tmpfs, filled up, then given room again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, status
from statedisks import fill

from vfile.journal import Journal

pytestmark = pytest.mark.mount

CREATES = 30


def _create(path: Path) -> int:
    try:
        path.write_bytes(b"new content\n")
    except OSError as err:
        return err.errno or -1
    return 0


def test_a_failed_intent_commit_is_retried_until_the_disk_takes_it(
        tree: Tree, small_state: Path) -> None:
    tree.state = small_state / "state"
    with running_appliance(fault="refuse") as app, \
            mounted(tree.source, tree.mountpoint, "--config", str(tree_config(tree, app)),
                    "-v") as server:
        fill(small_state)
        results = [_create(tree.mountpoint / f"new{i}") for i in range(CREATES)]
        assert set(results) <= {0, errno.EIO}, results
        assert errno.EIO in results, "the state disk never filled: the test shows nothing"
        wait_until(lambda: "was not committed" in server.log(), "a background commit failed")
        os.unlink(small_state / "filler")  # room again: the retry commits it
        wait_until(lambda: status(tree.mountpoint)["journal"]["durability"]["in_flight"] == 0,
                   "the failed intents committed by their retry", 60)
        assert "is committed now" in server.log()
    created = {p.name for p in tree.source.iterdir() if p.name.startswith("new")}
    assert created, results
    with Journal.open(tree.state, readonly=True) as j:
        journaled = {e.path for e in j.list_deferred()}
    assert created <= journaled, created - journaled
