"""k27: a close scan whose tick passed is judged by a close (the next one, or its own when
its tick passed before it), in that close's trio step, not by waking the batch task (its
event, timer and cancellation cost the trio thread more than the judgement); the batch
task's timer judges it only when no close comes. Through a real mount on the embedded
built-in appliance."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from filtering import filtering, journal_list, stored_verdict
from mounting import wait_for

pytestmark = pytest.mark.mount


def test_a_stream_of_creates_is_judged_by_later_closes(tmp_path: Path) -> None:
    n = 200
    with filtering(tmp_path) as f:
        for i in range(n):
            (f.mnt / f"s{i}.txt").write_bytes(os.urandom(2048))  # distinct: no verdict by hash
            time.sleep(0.002)  # a tick (4 ms here) passes within two closes
        wait_for("every close scan", lambda: f.gate()["pending_intents"] == 0, 60)
        gate = f.gate()
        assert gate["close_scans"] == n, gate
        # Most are judged by a later close; the rest (a stalled writer, the last ones) by
        # the batch task's timer.
        assert gate["close_scans_by_a_close"] >= n // 4, gate
        assert journal_list(f.state) == {}
        assert all(stored_verdict(f, f"s{i}.txt") == "clean" for i in range(n))


def test_a_lone_close_is_judged_without_another_request(tmp_path: Path) -> None:
    """No close after it: the batch task's timer judges it (two ticks late at most, beyond
    its own tick), or its own close if its tick had passed, with no request meanwhile."""
    with filtering(tmp_path) as f:
        (f.mnt / "lone.txt").write_bytes(b"alone\n" * 100)
        started = time.monotonic()
        wait_for("its close scan", lambda: f.gate()["pending_intents"] == 0, 30)
        gate = f.gate()
        assert gate["close_scans"] == 1 and gate["close_scans_by_a_close"] <= 1, gate
        assert time.monotonic() - started < 10  # does not hang
        wait_for("its verdict", lambda: stored_verdict(f, "lone.txt") == "clean", 30)
        assert journal_list(f.state) == {}
