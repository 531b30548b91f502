"""A read-open never waits on a write intent's fsync (issue 16: the tail of `safe` opens).

An unscanned read's journal record is tier 2 (committed, not fsynced); a write
intent is tier 1 (fsynced before its open returns). In `bench/failmodes.py` an
indexer's read that arrived while a writer's intent was being fsynced waited
for that fsync: 150-260 ms when the host's fsync was slow, the whole p99 of
`safe` during the outage. Here the state directory lives on an ext4 whose
fsyncs wait until we say so: its image is a file on a second ext4, which we
freeze (`fsfreeze`), so the inner file system's writes still land in its page
cache at once while its fsyncs cannot reach the frozen one below. The inner one
has no ext4 journal: a metadata update there (an mtime) would otherwise wait
for the frozen commit. Nothing stays frozen past `THAW_AFTER`, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from lifecycle import Tree, cli, journal_rows, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, status
from statedisks import durability, frozen, loop_ext4, opens_within

pytestmark = pytest.mark.mount

#: long, so that an open that returns never returns because its deadline passed
DEADLINE = 60.0
#: "does not hang": far below DEADLINE, far above what a committed record takes
BOUND = 15.0
#: the watchdog thaws by then, so that no test hangs on a frozen disk
THAW_AFTER = 40.0


@contextlib.contextmanager
def slow_fsync_disk(where: Path) -> Iterator[tuple[Path, Path]]:
    """(fs, below): an ext4 (no journal) whose image lives on another ext4 `below`.
    Freezing `below` holds every fsync of `fs` until the thaw, not its writes."""
    with loop_ext4(where) as below, loop_ext4(below, journal=False) as fs:
        yield fs, below


@contextlib.contextmanager
def frozen_at_most(fs: Path, seconds: float) -> Iterator[None]:
    """`frozen(fs)`, thawed by a watchdog after `seconds` if the body is still running."""
    with frozen(fs):
        done = threading.Event()
        watchdog = threading.Thread(target=lambda: done.wait(seconds) or subprocess.run(
            ["fsfreeze", "-u", str(fs)], check=False, capture_output=True), daemon=True)
        watchdog.start()
        try:
            yield
        finally:
            done.set()


def test_unscanned_read_does_not_wait_for_a_write_intents_fsync(tree: Tree) -> None:
    (tree.source / "state.db").write_bytes(b"x" * 4096)
    cold = [f"cold{i}.txt" for i in range(4)]
    for n in cold:
        (tree.source / n).write_text(f"content of {n}\n")
    with running_appliance() as app, slow_fsync_disk(tree.root) as (fs, below):
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                                      f'deadline = "{DEADLINE}s"\n')
        conf.write_text(conf.read_text().replace(str(tree.state), str(fs / "state")))
        with mounted(tree.source, tree.mountpoint, "--config", str(conf),
                     log_path=tree.root / "server.log"):
            # A window: reads are journaled unscanned (tier 2), no appliance involved.
            res = cli("quiesce", str(tree.mountpoint))
            assert res.returncode == 0, res.stderr
            writer_done = threading.Event()

            def write_open() -> None:
                fd = os.open(tree.mountpoint / "state.db", os.O_RDWR)  # a tier-1 intent
                os.close(fd)
                writer_done.set()

            with frozen_at_most(below, THAW_AFTER):
                writer = threading.Thread(target=write_open, daemon=True)
                writer.start()
                # The intent is registered and its batch taken: the writer's open is in
                # (or about to be in) the fsync, which waits for the thaw.
                wait_until(lambda: status(tree.mountpoint)["gate"]["pending_intents"] >= 1
                           and durability(tree.mountpoint)["queued"] == 0,
                           "the write intent is being committed")
                reads = opens_within([tree.mountpoint / n for n in cold], BOUND)
                still_waiting = not writer_done.is_set()
                held = durability(tree.mountpoint)["held_in_memory"]
            writer.join(BOUND)
            assert writer_done.is_set(), "the write-open did not return after the thaw"
            assert still_waiting, "the state disk's fsync did not wait: no evidence either way"
            assert None not in reads.values(), \
                f"unscanned reads waited for another open's fsync: {reads}"
            assert held == 0, "the reads' records were held in memory, not committed"
            assert set(cold) <= {r["path"] for r in journal_rows(tree.mountpoint)}
            res = cli("resume", str(tree.mountpoint))
            assert res.returncode == 0, res.stderr
