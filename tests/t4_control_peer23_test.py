"""The CLI answers only to a control socket served by root or by the caller (x23).

A client took whatever listened at the mount's socket name in /run/vfile. That
directory came out 0777 (the server's umask 0, `tests/t4_rundir_lock23_test.py`), so
a user could unlink a live mount's socket and bind their own under its name: root's
`vfile status` then printed the user's answer (a window that is not there, an empty
journal), and `vfile quarantine restore --mount` took the source from it. The client
now checks the listener's credentials (SO_PEERCRED) before it sends anything.

Runs in a private mount namespace with a fresh tmpfs on /run; the /run/vfile an
older server left (0777) is set up by hand after the mount started."""

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
import json, os, socket, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mounting import mounted, vfile_cmd
from vfile import control
base = Path(sys.argv[2])
FAKE = {"ok": True, "result": {"fake": "answered by uid 1001"}}
with mounted(base / "src", base / "mnt", "--state-dir", str(base / "state")):
    sock_path = control.candidate_sockets(base / "mnt")[0]
    assert sock_path.exists(), sock_path
    os.chmod(sock_path.parent, 0o777)  # as an older server left it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user: takes the socket's name
        os.close(r)
        os.setgroups([]); os.setresgid(1001, 1001, 1001); os.setresuid(1001, 1001, 1001)
        os.unlink(sock_path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(sock_path)); s.listen(8)
        os.write(w, b"x"); os.close(w)
        s.settimeout(30)
        try:
            while True:
                c, _ = s.accept()
                c.settimeout(5)
                try:
                    c.recv(65536)
                    c.sendall(json.dumps(FAKE).encode() + b"\n")
                except OSError:
                    pass
                c.close()
        except OSError:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    try:
        res = subprocess.run(vfile_cmd("status", str(base / "mnt"), "--json"),
                             capture_output=True, text=True, timeout=30)
    finally:
        os.kill(pid, 9); os.waitpid(pid, 0)
print(json.dumps({"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr}))
"""


def test_a_socket_planted_by_another_user_is_not_believed(tmp_path: Path) -> None:
    for sub in ("src", "mnt"):
        (tmp_path / sub).mkdir()
    tmp_path.chmod(0o755)
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"', "sh",
         sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "answered by uid 1001" not in out["stdout"], out
    assert out["rc"] == int(Exit.CONTROL), out
    assert "uid 1001" in out["stderr"], out
