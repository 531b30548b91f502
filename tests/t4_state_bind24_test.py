"""A state or quarantine directory inside the source reached through a bind mount is
refused at start (x24).

x23 refused a state directory at or below the source or the mountpoint by comparing
device and inode of the directory and its parents with the source's: a symlink into
the source is seen, a bind mount of a *subdirectory* of the source elsewhere is not
(none of the bind's parents is the source's root inode). `--state-dir /elsewhere/x`,
with the source's `sub` bound on `/elsewhere`, put the journal among the files it
judges (reachable and renamable through the mount, walked by the recovery walk), and a
quarantine directory there moved infected files back into the source. Now the real
location is read from /proc/self/mountinfo: the mount's filesystem and root, plus the
path below its mount point.

Each case runs in a private mount namespace, so the bind mount is gone with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vfile.errors import Exit

pytestmark = pytest.mark.mount

TESTS = Path(__file__).resolve().parent

SCRIPT = r"""
import json, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mounting import is_mounted, vfile_cmd
base, case = Path(sys.argv[2]), sys.argv[3]
name = sys.argv[4] if len(sys.argv) > 4 else "elsewhere"
src, mnt, bound = base / "src", base / "mnt", base / name
(src / "sub").mkdir(parents=True)
mnt.mkdir()
bound.mkdir()
subprocess.run(["mount", "--bind", str(src / "sub"), str(bound)], check=True)
if len(sys.argv) > 5:  # a bind of a directory below the bind (nested)
    (bound / "deeper").mkdir()
    again = base / "again"
    again.mkdir()
    subprocess.run(["mount", "--bind", str(bound / "deeper"), str(again)], check=True)
    bound = again
conf = base / "vfile.toml"
state, quarantine = base / "state", base / "quarantine"
if case == "state":
    state = bound / "x" / "state"
elif case == "quarantine":
    quarantine = bound / "q"
else:  # the mountpoint itself, in the source through the bind
    mnt = bound / "m"
    mnt.mkdir()
conf.write_text(f'[mount]\nquarantine_dir = "{quarantine}"\n')
try:
    res = subprocess.run(vfile_cmd("mount", "--foreground", "--config", str(conf),
                                   "--state-dir", str(state), str(src), str(mnt)),
                         capture_output=True, text=True, timeout=30)
    out = {"rc": res.returncode, "stderr": res.stderr}
except subprocess.TimeoutExpired:
    out = {"rc": "mounted and served", "stderr": ""}
finally:
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
out["in_source"] = sorted(p.name for p in (src / "sub").iterdir() if p.name != "m"
                         and not (p.name == "deeper" and not any(p.iterdir())))
print(json.dumps(out))
"""


@pytest.mark.parametrize("case", ["state", "quarantine"])
def test_a_directory_in_the_source_through_a_bind_mount_is_refused(
        tmp_path: Path, case: str) -> None:
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path), case],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == int(Exit.CONFIG), out
    words = "overlaps" if case == "state" else "inside the source"
    assert f"{case} directory" in out["stderr"] and words in out["stderr"], out
    assert out["in_source"] == [], out  # nothing created among the files it judges


def test_a_mountpoint_in_the_source_through_a_bind_mount_is_refused(tmp_path: Path) -> None:
    """The neighbour: the source and the mountpoint were compared as path strings, so a
    mountpoint below a bind mount of one of the source's subdirectories was not seen
    to overlap (with shared mount propagation, systemd's default, the mount then shows
    up inside the source too, and the server's own lookups there go through it)."""
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path), "mountpoint"],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == int(Exit.MOUNTPOINT), out
    assert "overlap" in out["stderr"], out


@pytest.mark.parametrize("extra", [["else where\n\\040x"], ["elsewhere", "nested"]],
                         ids=["escaped-in-mountinfo", "nested"])
def test_an_odd_or_nested_bind_mount_is_seen(tmp_path: Path, extra: list[str]) -> None:
    """r25: a bind mount point whose name mountinfo escapes (a space, a newline, a
    backslash: \\040 \\012 \\134), and a bind of a directory below a bind."""
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path), "state", *extra],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["rc"] == int(Exit.CONFIG), out
    assert out["in_source"] == [], out
