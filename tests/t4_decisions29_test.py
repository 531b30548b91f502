"""c29: the gate keeps each decision by its inputs (vfile.filter.decisions), so a create's
write and close decisions are not rebuilt per file. A kept decision must never outlive
the state it was made in: here a window starts after many same-content creates were
judged (their decisions kept, their verdict by hash ready), and the creates made during
it must still be left to the drain, not covered by the hash's clean verdict. Through a
real mount on the embedded built-in appliance; and, without a mount, every combination
of the inputs the gate sets against `policy.decide` itself."""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from filtering import filtering, journal_list, stored_verdict
from mounting import vfile_cmd, wait_for

from vfile.config.model import FailMode, OversizeRule
from vfile.filter.decisions import FIELDS, Decisions
from vfile.filter.policy import Cached, DecisionInputs, Event, QuotaState, ScanResult, decide


def _cli(*args: str) -> None:
    res = subprocess.run(vfile_cmd(*args), capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr


@pytest.mark.mount
def test_a_window_after_warm_creates_still_leaves_new_files_to_the_drain(
        tmp_path: Path) -> None:
    same = os.urandom(4096)
    with filtering(tmp_path) as f:
        for i in range(30):  # the decisions and the content's verdict by hash warm up
            (f.mnt / f"before{i}").write_bytes(same)
        f.wait_idle()
        assert journal_list(f.state) == {}
        by_hash = f.gate()["close_scans_by_hash"]
        assert by_hash >= 20, f.gate()
        _cli("quiesce", str(f.mnt), "--max", "10m")
        try:
            for i in range(10):
                (f.mnt / f"during{i}").write_bytes(same)
            wait_for("the window's closes", lambda: f.gate()["pending_intents"] == 0, 30)
            gate = f.gate()
            # Not judged by the hash's clean verdict: the window defers every close scan.
            assert gate["close_scans_by_hash"] == by_hash, gate
            assert set(journal_list(f.state)) == {f"during{i}" for i in range(10)}
            assert stored_verdict(f, "during0") is None
        finally:
            _cli("resume", str(f.mnt))
        wait_for("the drain", lambda: journal_list(f.state) == {}, 60)
        assert all(stored_verdict(f, f"during{i}") == "clean" for i in range(10))
        (f.mnt / "after").write_bytes(same)  # scanning is back: the hash covers it again
        f.wait_idle()
        assert journal_list(f.state) == {}
        assert f.gate()["close_scans_by_hash"] > by_hash


def test_every_kept_decision_is_the_one_decide_makes() -> None:
    decisions = Decisions()
    values = {"event": list(Event), "cached": list(Cached), "oversize_rule": list(OversizeRule),
              "fail_mode": list(FailMode), "quota": list(QuotaState)}
    combos = itertools.product(*(values.get(name, [False, True]) for name in FIELDS))
    n = 0
    for key in combos:
        judged = decisions.judged(key)
        inputs = DecisionInputs(**dict(zip(FIELDS, key, strict=True)))  # type: ignore[arg-type]
        assert judged.inputs == inputs
        assert judged.decision == decide(inputs)
        for scan, window in itertools.product(ScanResult, [False, True]):
            assert judged.after(scan, window) == decide(replace(inputs, scan=scan, window=window))
        n += 1
    assert n > 1000
    # The same inputs again: the same objects, decided once.
    key = (Event.CLOSE, True, False, Cached.NONE, True, False, True, False, False,
           OversizeRule.JOURNAL, FailMode.SAFE, QuotaState.NONE)
    assert decisions.judged(key) is decisions.judged(key)
