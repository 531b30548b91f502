"""Attack review a28: a drain rate set at b27's lower bounds, then corrected.

`vfile drain MNT rate --files-per-s 0.001` (the bound b27 allows) makes the drain's token
bucket sleep 1,000 s before its next file, and `--bytes-per-s 1` a second per byte of the
file before. The sleep was computed once, with the rate of that moment: an operator who
then set the rate right (`--files-per-s 500`) still had a drain asleep for the rest of
the 1,000 s (or days, for the bytes). Now a new rate wakes the bucket, which waits again
at the new rate. Through a real mount and `vfile drain` (on main: the three entries left
were still there 60 s after the correction, 2 runs of 2).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mounting import mounted, vfile_cmd, wait_for
from outage import deferred_paths, running_appliance

from vfile.journal.store import Journal

pytestmark = pytest.mark.mount

NAMES = [f"f{i}.txt" for i in range(4)]


def _content(name: str) -> bytes:
    return (b"clean %s\n" % name.encode()) * 400  # 4 KiB: 4,000 s at a byte a second


def _leased(state: Path) -> int:
    with Journal.open(state, readonly=True) as j:
        return sum(e.lease_until > time.time() for e in j.list_deferred())


def _drain(mnt: Path, *args: str) -> None:
    res = subprocess.run(vfile_cmd("drain", str(mnt), *args), capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr


def test_a_corrected_drain_rate_takes_effect_at_once(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    for name in NAMES:
        (src / name).write_bytes(_content(name))
    with running_appliance() as app, mounted(src, mnt, "--appliance", app.url, "--fail-mode",
                                             "safe", "--state-dir", str(state)) as server:
        app.set_fault("refuse")  # read unscanned: an entry each
        for name in NAMES:
            assert (mnt / name).read_bytes() == _content(name)
        wait_for("the entries", lambda: sorted(deferred_paths(state)) == NAMES, 30)
        # A typo: 1,000 s a file, and a second a byte (the files bucket adapts to the
        # appliance's latency, the bytes one does not)
        _drain(mnt, "rate", "--files-per-s", "0.001", "--bytes-per-s", "1")
        app.set_fault("none")
        # The first file goes at once (the bucket's one token); the next batch waits in
        # the bucket once the one after it is claimed ahead (both leased).
        wait_for("the drain asleep in its bucket", lambda: _leased(state) >= 2, 60)
        time.sleep(3)
        assert len(deferred_paths(state)) == len(NAMES) - 1  # held at the typo's rate
        _drain(mnt, "rate", "--files-per-s", "500", "--bytes-per-s", "1e9")  # corrected
        wait_for("the rest drained at the corrected rate", lambda: deferred_paths(state) == [],
                 60)
        assert "Traceback" not in server.log()
