"""The deferral lifecycle through real mounts: an outage, the return, the drain.

A real built-in appliance runs as a process whose fault is switched at run
time (`--fault-file` + SIGUSR1); the mount is a real `vfile mount` subprocess;
second users are real uids (`setpriv`, or a python that drops privileges
after its imports: the interpreter lives under /root, which is 0700). The
trees live in a 0755 directory under /tmp so those uids can reach them
(pytest's tmp_path is in a 0700 tree).

The helpers are in tests/lifecycle.py, the `tree` fixture in conftest.py.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from lifecycle import (
    NOBODY,
    READER_UID,
    WRITER_UID,
    Tree,
    as_user,
    cli,
    drained,
    journal_rows,
    open_errno,
    tree_config,
    wait_until,
)
from mounting import mounted
from outage import running_appliance, status

from vfile.errors import Exit
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount


# --- drain after return ---------------------------------------------------------------------


def test_outage_exposure_trail_then_drain_quarantines(tree: Tree) -> None:
    """Appliance down: uid 1000 writes EICAR, uid 1001 reads it; both are journaled with
    who they were. The appliance comes back; the drain quarantines the file after the
    fact and names who opened it; the journal ends empty."""
    eicar = tree.root / "eicar.src"
    eicar.write_bytes(EICAR)
    os.chmod(eicar, 0o644)
    with running_appliance(fault="refuse") as app:
        conf = tree_config(tree, app)
        with mounted(tree.source, tree.mountpoint, "-o", "allow_other",
                     "--config", str(conf)) as server:
            target = tree.mountpoint / "drop.com"
            res = as_user(WRITER_UID, "cp", str(eicar), str(target))
            assert res.returncode == 0, res.stderr
            assert (tree.source / "drop.com").stat().st_uid == WRITER_UID
            res = as_user(READER_UID, "cat", str(target))
            assert res.returncode == 0, res.stderr  # fail-safe: allowed, journaled
            assert res.stdout.encode() == EICAR

            # Before the drain: the entry and its exposure trail, through --mount.
            rows = journal_rows(tree.mountpoint)
            assert [r["path"] for r in rows] == ["drop.com"]
            res = cli("journal", "show", "drop.com", "--mount", str(tree.mountpoint))
            assert res.returncode == 0, res.stderr
            assert f"uid={WRITER_UID} " in res.stdout and " cp" in res.stdout
            assert f"uid={READER_UID} " in res.stdout and " cat" in res.stdout
            st = status(tree.mountpoint)
            assert st["journal"]["deferred"] == 1 and st["gate"]["exposures"] >= 1
            assert not st["appliances"][0]["healthy"]

            app.set_fault("none")  # the appliance returns; the drain catches up
            wait_until(lambda: drained(tree.mountpoint),
                       "the journal drained")
            st = status(tree.mountpoint)
            assert st["drain"]["done"]["infected"] == 1
            assert st["journal"]["quarantined"] == 1
            assert not (tree.source / "drop.com").exists()
            # The drain dropped the kernel's entry for the name before it was done.
            assert open_errno(target) == errno.ENOENT
            res = cli("quarantine", "list", "--mount", str(tree.mountpoint), "--json")
            assert res.returncode == 0, res.stderr
            [rec] = json.loads(res.stdout)
            assert rec["original_path"] == "drop.com"
            assert Path(rec["quarantine_path"]).read_bytes() == EICAR
            assert journal_rows(tree.mountpoint) == []
            log = server.log()
        line = next(x for x in log.splitlines() if "after the fact" in x)
        assert "'drop.com'" in line
        assert f"uid {WRITER_UID} " in line and "(cp)" in line
        assert f"uid {READER_UID} " in line and "(cat)" in line


# --- the control plane refuses strangers ----------------------------------------------------


def test_non_owner_is_refused_by_the_control_plane(tree: Tree) -> None:
    with running_appliance() as app, \
            mounted(tree.source, tree.mountpoint, "-o", "allow_other",
                    "--config", str(tree_config(tree, app))):
        for args in (["status", str(tree.mountpoint)],
                     ["quiesce", str(tree.mountpoint)],
                     ["journal", "list", "--mount", str(tree.mountpoint)]):
            res = cli(*args, uid=NOBODY)
            assert res.returncode == Exit.CONTROL, (args, res.stdout, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, res.stderr
            assert f"uid {NOBODY} is neither root nor the mount's owner" in lines[0]
        assert not status(tree.mountpoint)["window"]["active"]  # the quiesce did nothing


# --- `vfile journal … --mount` on a live mount ------------------------------------------------


def test_journal_cli_through_the_control_plane(tree: Tree) -> None:
    """--mount finds the live mount's journal: reads, retry (kicks the drain), purge."""
    for name in ("a.txt", "b.txt", "c.txt"):
        (tree.source / name).write_text(f"clean {name}\n")
    with running_appliance(fault="refuse") as app, \
            mounted(tree.source, tree.mountpoint, "--config", str(tree_config(tree, app))):
        for name in ("a.txt", "b.txt", "c.txt"):
            assert (tree.mountpoint / name).read_text() == f"clean {name}\n"
        assert [r["path"] for r in journal_rows(tree.mountpoint)] == ["a.txt", "b.txt", "c.txt"]
        res = cli("journal", "stats", "--mount", str(tree.mountpoint), "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["deferred"] == 3, res.stderr
        res = cli("journal", "export", "--mount", str(tree.mountpoint))
        assert res.returncode == 0 and res.stdout.count("\n") == 3, res.stderr
        res = cli("journal", "purge", "b.txt", "--mount", str(tree.mountpoint), "--yes")
        assert res.returncode == 0 and "1 entry purged" in res.stdout, res.stderr
        assert [r["path"] for r in journal_rows(tree.mountpoint)] == ["a.txt", "c.txt"]

        # The drain is paused; the appliance returns; a retry through the live mount
        # leaves the pause alone, and resuming drains the rest.
        res = cli("drain", str(tree.mountpoint), "pause")
        assert res.returncode == 0, res.stderr
        app.set_fault("none")
        wait_until(lambda: status(tree.mountpoint)["appliances"][0]["healthy"],
                   "the mount sees the appliance")
        res = cli("journal", "retry", "--mount", str(tree.mountpoint))
        assert res.returncode == 0 and "reset" in res.stdout, res.stderr
        assert status(tree.mountpoint)["drain"]["paused"]
        assert len(journal_rows(tree.mountpoint)) == 2
        res = cli("drain", str(tree.mountpoint), "resume")
        assert res.returncode == 0, res.stderr
        wait_until(lambda: journal_rows(tree.mountpoint) == [], "the journal drained")

        res = cli("journal", "list", "--mount", str(tree.mountpoint), "--state-dir",
                  str(tree.state))
        assert res.returncode == Exit.USAGE and "not both" in res.stderr
    res = cli("journal", "list", "--mount", str(tree.mountpoint))
    assert res.returncode == Exit.CONTROL and "no live vfile mount" in res.stderr
