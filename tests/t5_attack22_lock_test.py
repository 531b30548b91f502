"""Attack review x22: the state directory's `mount.lock` (vfile/service.py `_own_state_dir`)
is not a plain file of its own.

The mount opens it O_NOFOLLOW (a symlink is refused), then truncated and rewrote it with
its pid. A FIFO there made `ftruncate` fail with EINVAL: a traceback and exit 1, not one
clear message and a documented exit code. A second name of another file (a hard link
planted by whoever can write the state directory) was truncated: the file it names lost
its content to the mount's pid.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mounting import force_unmount, is_mounted, stop_process, vfile_cmd, wait_for

pytestmark = pytest.mark.mount


def _start(tmp: Path) -> tuple[int, str]:
    """(exit status, stderr) of a mount that must refuse to start (one that serves is
    unmounted and stopped: -1)."""
    src, mnt = tmp / "src", tmp / "mnt"
    src.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    err = tmp / "stderr"
    with err.open("wb") as f:
        proc = subprocess.Popen(vfile_cmd("mount", "--foreground", "--state-dir",
                                          str(tmp / "state"), "--", str(src), str(mnt)),
                                stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    try:
        wait_for("the start to end", lambda: proc.poll() is not None or is_mounted(mnt), 60)
    finally:
        force_unmount(mnt)
        stop_process(proc)
    served = is_mounted(mnt) or proc.returncode == 0
    return (-1 if served else proc.returncode), err.read_text(errors="replace")


def test_a_fifo_as_the_lock_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    os.mkfifo(tmp_path / "state" / "mount.lock", 0o600)
    rc, err = _start(tmp_path)
    assert rc == 7, err
    assert "Traceback" not in err and "mount.lock" in err, err


def test_a_hard_link_as_the_lock_file_leaves_the_other_file_alone(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    precious = tmp_path / "precious"
    precious.write_bytes(b"another file's content\n")
    os.link(precious, tmp_path / "state" / "mount.lock")
    rc, err = _start(tmp_path)
    assert precious.read_bytes() == b"another file's content\n"
    assert rc == 7, err
    assert "Traceback" not in err and "mount.lock" in err, err
