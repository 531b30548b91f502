"""What the mount server creates is not writable by other users (x23).

The server runs with umask 0 (it applies each caller's umask to the files it creates
for them), and made its own directories and files with default modes: the state root
/var/lib/vfile (a parent made by `mkdir(parents=True)`) came out 0777, so any user
could move a mount's state directory aside and put their own in its place, with a
journal whose verdicts call their infected file clean, trusted at the next start; the
audit log came out 0666 (anyone could forge or erase its lines, and read who opened
what); the missing parents of a quarantine directory 0777 (a user could put their own
directory in its place, and receive the quarantined files). An existing state
directory that is not a private directory of ours is refused.

Each case runs in a private mount namespace with fresh tmpfs on /var/lib and /run, so
the machine's own are not touched."""

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
import json, os, stat, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mounting import mounted, vfile_cmd
from vfile.journal.statedir import default_state_dir
base, case = Path(sys.argv[2]), sys.argv[3]
src, mnt = base / "src", base / "mnt"
state = default_state_dir(mnt)
def mode(p):
    st = os.lstat(p)
    return [stat.S_IMODE(st.st_mode), st.st_uid]
if case == "planted":
    state.mkdir(parents=True)
    os.chmod(state.parent, 0o755)
    os.chown(state, 1001, 1001)
    res = subprocess.run(vfile_cmd("mount", "--foreground", str(src), str(mnt)),
                         capture_output=True, text=True, timeout=30)
    print(json.dumps({"rc": res.returncode, "stderr": res.stderr}))
    sys.exit(0)
audit = base / "logs" / "deeper" / "audit.jsonl"
quarantine = base / "q" / "deeper" / "quarantine"
old_audit = base / "old-audit.jsonl"  # an older server's 0666 log, appended to
old_audit.write_text("")
os.chmod(old_audit, 0o666)
(base / "vfile.toml").write_text(f'[mount]\nquarantine_dir = "{quarantine}"\n')
with mounted(src, mnt, "--audit-log", str(audit), "--config", str(base / "vfile.toml")):
    pass
with mounted(src, mnt, "--audit-log", str(old_audit)):
    (mnt / "f").write_bytes(b"through the mount\n")
    (mnt / "f").read_bytes()
print(json.dumps({"root": mode(state.parent), "state": mode(state), "audit": mode(audit),
                  "logs": mode(audit.parent), "logs_parent": mode(audit.parent.parent),
                  "quarantine": mode(quarantine), "q": mode(base / "q"),
                  "q_deeper": mode(quarantine.parent), "old_audit": mode(old_audit)}))
"""


def _run(tmp_path: Path, case: str) -> dict[str, object]:
    for sub in ("src", "mnt"):
        (tmp_path / sub).mkdir()
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o mode=0755 tmpfs /var/lib && '
         'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"', "sh",
         sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path), case],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_state_root_state_directory_and_audit_log_are_not_writable_by_others(
        tmp_path: Path) -> None:
    out = _run(tmp_path, "fresh")
    modes = {k: v[0] for k, v in out.items() if isinstance(v, list)}
    assert all(not m & 0o022 for m in modes.values()), {k: f"{m:o}" for k, m in modes.items()}
    assert modes["state"] == 0o700 and not modes["audit"] & 0o077, modes
    assert modes["quarantine"] == 0o700 and not modes["old_audit"] & 0o077, modes


def test_a_state_directory_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    out = _run(tmp_path, "planted")
    assert out["rc"] == int(Exit.JOURNAL), out["stderr"]
    assert "not a private directory" in str(out["stderr"]), out["stderr"]
