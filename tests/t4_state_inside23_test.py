"""A state directory inside the source (or the mountpoint) is refused at start (x23).

The quarantine directory was refused inside the source; its neighbour, the state
directory, was not: with `quarantine_dir` set elsewhere, `--state-dir SRC/.vfile`
mounted. The journal then lives among the files it judges: reachable through the
mount, walked by the recovery walk, and a user who may write to its parent directory
in the source can rename it away through the mount and plant a directory of their own
there, whose verdicts the next start trusts (a clean verdict for their infected file's
identity: served). A state directory under the mountpoint is hidden by the mount, and
the server's later writes there by path would go through its own mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mounting import is_mounted, vfile_cmd

from vfile.errors import Exit

pytestmark = pytest.mark.mount


def _refused(conf: Path, state: Path, src: Path, mnt: Path) -> subprocess.CompletedProcess[str]:
    """`vfile mount --foreground` of `src` on `mnt`, which must exit with a config error
    rather than serve (a mount that serves is killed by the timeout and unmounted)."""
    try:
        res = subprocess.run(vfile_cmd("mount", "--foreground", "--config", str(conf),
                                       "--state-dir", str(state), str(src), str(mnt)),
                             capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        res = None  # it mounted and served (killed by the timeout)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert res is not None, "mounted"
    assert res.returncode == int(Exit.CONFIG), res.stderr
    return res


@pytest.mark.parametrize("where", ["below_source", "source", "below_mountpoint",
                                   "symlink_to_source"])
def test_a_state_directory_overlapping_the_source_or_mountpoint_is_refused(
        tmp_path: Path, where: str) -> None:
    src, mnt = tmp_path / "top" / "src", tmp_path / "mnt"
    src.mkdir(parents=True)
    mnt.mkdir()
    state = {"below_source": src / ".vfile", "source": src, "below_mountpoint": mnt / ".vfile",
             "symlink_to_source": tmp_path / "link" / "s"}[where]
    (tmp_path / "link").symlink_to(src)
    conf = tmp_path / "vfile.toml"
    conf.write_text(f'[mount]\nquarantine_dir = "{tmp_path / "quarantine"}"\n')
    res = _refused(conf, state, src, mnt)
    assert "state directory" in res.stderr and "overlaps" in res.stderr, res.stderr
    assert sorted(os.listdir(src)) == []  # nothing created among the files it judges


def test_a_quarantine_directory_below_the_mountpoint_is_refused(tmp_path: Path) -> None:
    """Its neighbour: a quarantine directory was refused inside the source, checked
    before the mount existed, so one below the mountpoint passed. Once mounted, a
    quarantine move there went through the mount into the source (into a directory of
    that name a user made there, owned by them): the file was scanned there, found
    infected and quarantined again, without end (seen: a name growing by one record id
    per round, several rounds a second)."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    conf = tmp_path / "vfile.toml"
    conf.write_text(f'[mount]\nquarantine_dir = "{mnt / "q"}"\n')
    res = _refused(conf, state, src, mnt)
    assert "quarantine directory" in res.stderr and "mountpoint" in res.stderr, res.stderr
