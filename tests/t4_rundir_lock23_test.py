"""Root's runtime directory (/run/vfile) and the journal's lock directory in it (x23).

The mount server runs with umask 0, and the journal placed its LMDB lock file with
`journal-locks.mkdir(0o700, parents=True)`: the parent it created, /run/vfile, got
mode 0777 (pathlib makes parents with the default mode, less the umask). Any local
user could then unlink a mount's control socket and bind one of their own under its
name (root's `vfile status`, `quiesce`, `quarantine restore --mount` talk to it), or
move `journal-locks` aside and plant a directory of their own whose
`journal-<digest>.lock` is a symlink to any file: LMDB, opening the journal as root,
follows `state/lock.mdb` there, opens that file read-write and writes its lock table
into it.

Each case runs in a private mount namespace with a fresh tmpfs on /run (as after a
boot), so the machine's /run/vfile is not touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount

TESTS = Path(__file__).resolve().parent

#: run inside the namespace: mount, write and read a file, report what /run/vfile holds
SCRIPT = r"""
import json, os, stat, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mounting import mounted
from vfile.journal.environment import lock_target
base = Path(sys.argv[2])
plant = sys.argv[3] == "plant"
rundir = Path("/run/vfile")
if plant:
    # What the old server left (0777), and a user's directory in place of journal-locks.
    rundir.mkdir()
    os.chmod(rundir, 0o777)
    locks = rundir / "journal-locks"
    locks.mkdir()
    os.chown(locks, 1001, 1001)
    target = lock_target(base / "state", locks)
    os.symlink(base / "victim", target)
    os.lchown(target, 1001, 1001)
with mounted(base / "src", base / "mnt", "--state-dir", str(base / "state")):
    (base / "mnt" / "f").write_bytes(b"through the mount\n")
    assert (base / "mnt" / "f").read_bytes() == b"through the mount\n"
st = os.lstat(rundir)
out = {"rundir_mode": stat.S_IMODE(st.st_mode), "rundir_uid": st.st_uid,
       "victim": (base / "victim").read_bytes().decode(errors="replace")}
locks = rundir / "journal-locks"
if locks.exists():
    ls = os.lstat(locks)
    out.update(locks_mode=stat.S_IMODE(ls.st_mode), locks_uid=ls.st_uid)
print(json.dumps(out))
"""

VICTIM = "a file of root's that no lock table may overwrite\n" * 20


def _run(tmp_path: Path, mode: str) -> dict[str, object]:
    for sub in ("src", "mnt"):
        (tmp_path / sub).mkdir()
    (tmp_path / "victim").write_text(VICTIM)
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"', "sh",
         sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path), mode],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_the_runtime_directory_is_created_root_only(tmp_path: Path) -> None:
    out = _run(tmp_path, "fresh")
    assert out["rundir_uid"] == 0
    assert isinstance(out["rundir_mode"], int)
    assert not out["rundir_mode"] & 0o022, f"/run/vfile mode {out['rundir_mode']:o}"
    assert out["locks_uid"] == 0 and out["locks_mode"] == 0o700, out


def test_a_planted_lock_directory_is_not_followed(tmp_path: Path) -> None:
    out = _run(tmp_path, "plant")
    assert out["victim"] == VICTIM  # LMDB wrote its lock table into it before
    assert isinstance(out["rundir_mode"], int)
    assert not out["rundir_mode"] & 0o022, "left writable by others"
