"""Scan-debt quota through a real mount: escalation (closed → EACCES for unscanned
opens; read-only → EROFS for writes), and recovery once the drain paid the debt."""

from __future__ import annotations

import errno
import os

import pytest
from lifecycle import Tree, journal_rows, open_errno, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, status

pytestmark = pytest.mark.mount

MAX_ENTRIES = 3


def _quota(escalate: str) -> str:
    return ('[[profile]]\nname = "default"\nfail_mode = "safe"\n'
            f'[profile.quota]\nmax_entries = {MAX_ENTRIES}\nlow_water = 0.5\n'
            f'escalate = "{escalate}"\n')


def _state(t: Tree) -> str:
    [profile] = status(t.mountpoint)["profiles"]
    return str(profile["quota"]["state"])


def test_closed_escalation_and_recovery_after_the_drain(tree: Tree) -> None:
    for i in range(8):
        (tree.source / f"f{i}.txt").write_text(f"unscanned {i}\n")
    with running_appliance(fault="refuse") as app, \
            mounted(tree.source, tree.mountpoint, "--config",
                    str(tree_config(tree, app, _quota("closed")))) as server:
        # Within quota: unscanned opens are allowed and journaled.
        for i in range(MAX_ENTRIES + 1):
            assert open_errno(tree.mountpoint / f"f{i}.txt") == 0
        wait_until(lambda: _state(tree) == "closed", "the quota escalates")
        assert open_errno(tree.mountpoint / "f5.txt") == errno.EACCES
        assert len(journal_rows(tree.mountpoint)) == MAX_ENTRIES + 1  # nothing new owed

        app.set_fault("none")
        wait_until(lambda: journal_rows(tree.mountpoint) == [], "the journal drained")
        wait_until(lambda: _state(tree) == "none", "the quota recovers")
        # Recovered: with the appliance gone again, unscanned opens are deferred once more.
        app.set_fault("refuse")
        wait_until(lambda: not status(tree.mountpoint)["appliances"][0]["healthy"],
                   "the mount sees the appliance down")
        assert open_errno(tree.mountpoint / "f6.txt") == 0
        assert [r["path"] for r in journal_rows(tree.mountpoint)] == ["f6.txt"]
        log = server.log()
    assert "over its scan-debt quota" in log and "recovered" in log


def test_read_only_escalation_refuses_writes_with_erofs(tree: Tree) -> None:
    for i in range(6):
        (tree.source / f"f{i}.txt").write_text(f"unscanned {i}\n")
    with running_appliance(fault="refuse") as app, \
            mounted(tree.source, tree.mountpoint, "--config",
                    str(tree_config(tree, app, _quota("read-only")))):
        for i in range(MAX_ENTRIES + 1):
            assert open_errno(tree.mountpoint / f"f{i}.txt") == 0
        wait_until(lambda: _state(tree) == "read-only", "the quota escalates")
        assert open_errno(tree.mountpoint / "f0.txt", os.O_WRONLY) == errno.EROFS
        assert open_errno(tree.mountpoint / "new.txt", os.O_WRONLY | os.O_CREAT) == errno.EROFS
        assert not (tree.source / "new.txt").exists()
        assert open_errno(tree.mountpoint / "f5.txt") == 0  # reading stays allowed
        app.set_fault("none")
        wait_until(lambda: _state(tree) == "none", "the quota recovers")
        assert open_errno(tree.mountpoint / "new.txt", os.O_WRONLY | os.O_CREAT) == 0
        assert (tree.source / "new.txt").exists()
