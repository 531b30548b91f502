"""An existing file's write intent is durable before its content changes, not before
its open returns (issue 16: every slow `safe` open during an outage was a write-open
waiting for its own intent's fsync while the host's fsync was slow).

The state directory lives on an ext4 whose fsyncs wait until we say so (its image
is a file on a second ext4, which we freeze: the inner file system's writes still
land in its page cache, its fsyncs cannot reach the frozen one below). While the
fsync is held:
- an O_RDWR open of an existing file returns (its intent is committed);
- a reader that opens O_RDWR and never writes (SQLite) opens and closes;
- a write through such a handle does NOT reach the source: the writer's close
  (the kernel's writeback sends the WRITE there) waits, and the source keeps its
  old bytes, until the fsync returns. Then the bytes land, and the file has a
  journal entry (or a verdict).
Nothing stays frozen past `THAW_AFTER`, whatever happens.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from lifecycle import Tree, journal_rows, wait_until
from outage import running_appliance, status
from statedisks import frozen_at_most, mounted_safe_on, slow_fsync_disk

pytestmark = pytest.mark.mount

#: long, so that an open that returns never returns because its deadline passed
DEADLINE = 60.0
#: "does not hang": far below THAW_AFTER, far above what a committed record takes
BOUND = 15.0
#: the watchdog thaws by then, so that no test hangs on a frozen disk
THAW_AFTER = 40.0

OLD, NEW = b"A" * 4096, b"B" * 4096


class Steps:
    """Times at which a thread passed each of its steps (monotonic)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.error: BaseException | None = None

    def run(self, body: object) -> threading.Thread:
        def go() -> None:
            try:
                body(self)  # type: ignore[operator]
            except BaseException as err:  # reported by the test
                self.error = err
        th = threading.Thread(target=go, daemon=True)
        th.start()
        return th

    def passed(self, step: str) -> bool:
        return step in self.at


def test_write_open_returns_before_its_intents_fsync_and_the_write_waits(tree: Tree) -> None:
    (tree.source / "state.db").write_bytes(OLD)
    (tree.source / "reader.db").write_bytes(OLD)
    with running_appliance() as app, slow_fsync_disk(tree.root) as (fs, below), \
            mounted_safe_on(tree, app, fs, DEADLINE):
        # Scanned once, so the opens below are not waiting on a scan either.
        for n in ("state.db", "reader.db"):
            assert (tree.mountpoint / n).read_bytes() == OLD

        def writer(s: Steps) -> None:
            fd = os.open(tree.mountpoint / "state.db", os.O_RDWR)
            s.at["opened"] = time.monotonic()
            os.pwrite(fd, NEW, 0)
            s.at["written"] = time.monotonic()
            os.close(fd)  # writeback: the WRITE reaches the server here
            s.at["closed"] = time.monotonic()

        def reader(s: Steps) -> None:  # SQLite's way: O_RDWR, reads only
            fd = os.open(tree.mountpoint / "reader.db", os.O_RDWR)
            s.at["opened"] = time.monotonic()
            assert os.pread(fd, 4096, 0) == OLD
            os.close(fd)
            s.at["closed"] = time.monotonic()

        w, r = Steps(), Steps()
        with frozen_at_most(below, THAW_AFTER):
            wt = w.run(writer)
            wait_until(lambda: w.passed("opened") or w.error is not None,
                       "the write-open returned while the intent's fsync is held",
                       BOUND)
            rt = r.run(reader)
            wait_until(lambda: r.passed("closed") or r.error is not None,
                       "an O_RDWR reader opened and closed while the fsync is held",
                       BOUND)
            # The WRITE arrived and waits for the intent's fsync (or, wrongly, went
            # through: the asserts below say which).
            wait_until(lambda: w.passed("closed") or w.error is not None
                       or (tree.source / "state.db").read_bytes() != OLD
                       or status(tree.mountpoint)["gate"]
                       .get("writes_awaiting_intent_fsync", 0) >= 1,
                       "the writer's WRITE waits for its intent's fsync", BOUND)
            source_while_held = (tree.source / "state.db").read_bytes()
            closed_while_held = w.passed("closed")
        wt.join(BOUND)
        rt.join(BOUND)
        assert w.error is None and r.error is None, (w.error, r.error)
        assert source_while_held == OLD, "a write reached the source before its " \
            "intent was durable"
        assert not closed_while_held, "the writer's close returned before its WRITE " \
            "could reach the source"
        assert w.passed("closed"), "the writer's close did not return after the thaw"
        assert (tree.source / "state.db").read_bytes() == NEW
        wait_until(lambda: status(tree.mountpoint)["gate"]["pending_intents"] == 0,
                   "the close scans settled the intents")
        rows = {x["path"] for x in journal_rows(tree.mountpoint)}
        gate = status(tree.mountpoint)["gate"]
        # Scanned clean at its close (a verdict), or left for the drain (an entry).
        assert "state.db" in rows or gate["close_scans"] >= 1, (rows, gate)
        assert gate["intent_fsync_failures"] == 0
