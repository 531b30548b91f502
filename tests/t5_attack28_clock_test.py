"""Attack review a28: the wall clock steps back while close scans are queued (an NTP step,
an operator's `date -s`), through a real mount whose server's clock is stepped by a patch
(tests/serverpatches.py; the machine's own clock is left alone).

A close scan's due time (k27's queue, vfile.filter.closing) is a wall-clock time a tick
ahead. Stepped back an hour, the head of the queue was due an hour ahead: no close judged
it (`_due_now`), the batch task's timer waited the hour, and every close queued behind it
waited too, each holding a descriptor (then, past `holding_max`, left to the drain). A due
time can never be more than a whole-second file's tick ahead: one further ahead is judged
at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mounting import mounted, wait_for
from serverpatches import patched

from vfile import control

pytestmark = pytest.mark.mount

#: the server's wall clock (time.time, time.time_ns) steps back an hour right after the
#: close of a file named step* is queued, before anything judges it
PATCH = """
    import os
    import time

    _real_ns, _real = time.time_ns, time.time
    STEP = [0]
    time.time_ns = lambda: _real_ns() - STEP[0]
    time.time = lambda: _real() - STEP[0] / 1e9

    from vfile.filter import closing

    real_submit = closing.CloseScans.submit

    def submit(self, path, *args, **kwargs):
        real_submit(self, path, *args, **kwargs)
        if os.path.basename(path).startswith("step") and not STEP[0]:
            STEP[0] = 3600 * 10**9
            closing.log.warning("test patch: the wall clock stepped back an hour")

    closing.CloseScans.submit = submit
"""


def test_close_scans_queued_when_the_clock_steps_back_are_judged(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()

    def gate() -> dict[str, Any]:
        got: dict[str, Any] = control.call(str(mnt), "status", timeout=30)["gate"]
        return got

    with mounted(src, mnt, "--state-dir", str(state), env=patched(tmp_path, PATCH)) as server:
        (mnt / "warm.txt").write_bytes(b"warm-up\n")
        wait_for("the warm-up's close scan", lambda: gate()["pending_intents"] == 0, 30)
        (mnt / "step.txt").write_bytes(b"queued when the clock steps\n")
        for i in range(20):
            (mnt / f"after{i}.txt").write_bytes(os.urandom(100))
        # Before: the one queued at the step, and the twenty behind it, for an hour.
        wait_for("every close scan", lambda: gate()["pending_intents"] == 0, 60)
        assert "stepped back an hour" in server.log(), server.log()[-2000:]
        assert (mnt / "step.txt").read_bytes() == b"queued when the clock steps\n"
