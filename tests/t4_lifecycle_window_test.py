"""Quiesce/migration windows through a real mount: quiesce with many opens blocked
on a black-holed appliance, and a window's `--max` expiry."""

from __future__ import annotations

import errno
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lifecycle import Tree, cli, journal_rows, open_errno, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, status

pytestmark = pytest.mark.mount

SAFE_OPENS = 24
CLOSED_OPENS = 12
#: the scan deadline of the blocked opens: far longer than any quiesce may take
LONG = "20s"


def test_quiesce_releases_opens_blocked_on_a_black_hole(tree: Tree) -> None:
    """36 opens wait on a black-holed appliance (20 s deadline); quiesce returns at once
    and they complete per their fail mode: safe ones succeed, journaled; closed ones
    get EACCES."""
    (tree.source / "closed").mkdir()
    safe = [tree.source / f"s{i}.txt" for i in range(SAFE_OPENS)]
    closed = [tree.source / "closed" / f"c{i}.txt" for i in range(CLOSED_OPENS)]
    for i, p in enumerate(safe + closed):
        p.write_text(f"distinct content {i}\n")  # distinct identities: one scan each
    profile = (f'attempt_timeout = "{LONG}"\ndeadline = "{LONG}"\nretries = 0\n')
    with running_appliance() as app:
        conf = tree_config(tree, app, (
            '[[profile]]\nname = "strict"\npaths = ["closed/**"]\nfail_mode = "closed"\n'
            f'infected_action = "deny"\n{profile}'
            f'[[profile]]\nname = "default"\nfail_mode = "safe"\n{profile}'))
        # The pool's probes must not give up on the appliance before the test is done.
        conf.write_text(conf.read_text().replace('attempt_timeout = "1s"',
                                                 f'attempt_timeout = "{LONG}"'))
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)):
            app.set_fault("blackhole")
            mnt_paths = [tree.mountpoint / p.relative_to(tree.source) for p in safe + closed]
            done_at: dict[Path, float] = {}
            lock = threading.Lock()

            def opener(path: Path) -> int:
                code = open_errno(path)
                with lock:
                    done_at[path] = time.monotonic()
                return code

            with ThreadPoolExecutor(len(mnt_paths)) as pool:
                futures = [pool.submit(opener, p) for p in mnt_paths]
                wait_until(lambda: status(tree.mountpoint)["gate"]["in_flight"]
                           == len(mnt_paths), "every open waits on the appliance")
                assert not done_at, "an open finished although the appliance never answers"
                started = time.monotonic()
                res = cli("quiesce", str(tree.mountpoint), "--max", "5m")
                returned = time.monotonic()
                assert res.returncode == 0, res.stderr
                results = [f.result(timeout=10) for f in futures]  # not the 20 s deadline
            # Generous: the design says well under a second.
            assert returned - started < 3.0, res.stdout
            assert max(done_at.values()) - started < 10.0
            assert results[:SAFE_OPENS] == [0] * SAFE_OPENS
            assert results[SAFE_OPENS:] == [errno.EACCES] * CLOSED_OPENS
            st = status(tree.mountpoint)
            assert st["window"]["active"] and st["gate"]["in_flight"] == 0
            rows = journal_rows(tree.mountpoint)
            assert sorted(r["path"] for r in rows) == sorted(f"s{i}.txt"
                                                             for i in range(SAFE_OPENS))
            assert {r["reason"] for r in rows} == {"window"}
            res = cli("resume", str(tree.mountpoint))
            assert res.returncode == 0 and "window ended" in res.stdout, res.stderr
            app.set_fault("refuse")  # free the mount from the black hole before unmounting


def test_max_expiry_ends_the_window(tree: Tree) -> None:
    """During a window no appliance is contacted and opens do not wait; `--max` ends
    it by itself, and the drain then scans what the window deferred."""
    names = [f"w{i}.txt" for i in range(12)]
    for n in [*names, "after.txt"]:
        (tree.source / n).write_text(f"content of {n}\n")
    with running_appliance() as app, \
            mounted(tree.source, tree.mountpoint, "--config", str(tree_config(tree, app))):
        wait_until(lambda: status(tree.mountpoint)["appliances"][0]["healthy"],
                   "the appliance is healthy")
        # A window long enough to outlast any number of slow CLI processes on a loaded
        # machine: what is checked here is counters, not how long the opens took.
        res = cli("quiesce", str(tree.mountpoint), "--max", "10m")
        assert res.returncode == 0 and "quiesced in" in res.stdout, res.stderr
        before = status(tree.mountpoint)
        assert before["window"]["active"]
        scans = before["appliances"][0]["scans"]
        for n in names:
            assert (tree.mountpoint / n).read_text() == f"content of {n}\n"
        during = status(tree.mountpoint)
        assert during["window"]["active"], "the window ended before the opens were checked"
        assert during["appliances"][0]["scans"] == scans
        assert during["gate"]["scans"] == before["gate"]["scans"]
        rows = journal_rows(tree.mountpoint)
        assert sorted(r["path"] for r in rows) == sorted(names)
        assert {r["reason"] for r in rows} == {"window"}
        # The same window, cut short by --max rather than `resume`: a new quiesce with a
        # short --max replaces the deadline, and the window then ends by itself.
        res = cli("quiesce", str(tree.mountpoint), "--max", "1s")
        assert res.returncode == 0, res.stderr
        wait_until(lambda: not status(tree.mountpoint)["window"]["active"],
                   "--max ends the window")
        st = status(tree.mountpoint)
        assert st["window"]["windows_total"] == 1
        # Scanning is back: the window's deferrals drain, a new open is scanned.
        wait_until(lambda: journal_rows(tree.mountpoint) == [], "the journal drained")
        assert (tree.mountpoint / "after.txt").read_text() == "content of after.txt\n"
        st = status(tree.mountpoint)
        assert st["appliances"][0]["scans"] >= scans + len(names) + 1
        assert st["drain"]["done"]["clean"] == len(names)
        assert os.path.exists(tree.source / "after.txt")
