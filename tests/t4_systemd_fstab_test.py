"""examples/vfile@.service and an /etc/fstab line, against live mounts.

No systemd runs here, so the unit test does what systemd would for the unit:
`systemd-analyze verify` checks it, then its ExecStartPre/ExecStart lines are
expanded (%i, %f, the EnvironmentFile's $VAR and ${VAR}) and run with a
$NOTIFY_SOCKET bound by the test, which must receive READY=1 once the mount
serves, WATCHDOG=1 pings, and STOPPING=1 after SIGTERM (systemd's stop).

The fstab test installs the mount helper as /sbin/mount.fuse.vfile (where
mount(8) looks for it; removed afterwards) and runs the real `mount -a` and
`mount MOUNTPOINT` on an fstab file of its own (`mount -T`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mounting import force_unmount, is_mounted, server_pids, vfile_cmd, wait_gone

pytestmark = pytest.mark.mount

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "vfile@.service"
VENV_BIN = Path(sys.executable).parent
INSTALLED_VFILE = "/usr/local/bin/vfile"
HELPER = Path("/sbin/mount.fuse.vfile")


def unit_lines(text: str) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in
            (ln.partition("=") for ln in text.splitlines()
             if ln.strip() and not ln.startswith(("#", ";", "[")))]


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def expand(command: str, *, instance: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion, the part the unit uses: %i, %f, ${VAR}
    (one word), $VAR (split on whitespace)."""
    path = subprocess.run(["systemd-escape", "--unescape", "--path", instance],
                          capture_output=True, text=True, check=True).stdout.strip()
    words = []
    for word in shlex.split(command.replace("%i", instance).replace(
            "%f", "/" + path.lstrip("/"))):
        if re.fullmatch(r"\$\w+", word):
            words += env.get(word[1:], "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    if words and words[0] == INSTALLED_VFILE:
        words[0] = str(VENV_BIN / "vfile")  # where this checkout installs it
    return words


def receive(sock: socket.socket, want: str, deadline: float = 30.0) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + deadline
    while want not in got:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            got += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            raise AssertionError(f"no {want} from the service; got {got}") from None
    return got


def test_unit_verifies(tmp_path: Path) -> None:
    # A template is verified through an instance; the binary is this checkout's.
    text = UNIT.read_text().replace(INSTALLED_VFILE, str(VENV_BIN / "vfile"))
    (tmp_path / "vfile@.service").write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", "--man=no",
                          str(tmp_path / "vfile@mnt-guest.service")],
                         capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_unit_runs_the_mount_with_notify_and_watchdog(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt" / "guest"
    src.mkdir()
    (src / "hello.txt").write_text("hi")
    instance = subprocess.run(["systemd-escape", "--path", str(mnt)], capture_output=True,
                              text=True, check=True).stdout.strip()
    env_file = tmp_path / f"{instance}.env"  # /etc/vfile/%i.env, in a test directory
    env_file.write_text(f"VFILE_SOURCE={src}\nVFILE_OPTIONS=--state-dir {tmp_path / 'state'}"
                        f" --metrics 127.0.0.1:0\n")
    lines = unit_lines(UNIT.read_text())
    settings = dict(lines)
    assert settings["Type"] == "notify"
    assert settings["EnvironmentFile"] == "/etc/vfile/%i.env"
    env = read_env_file(env_file)
    pre = [expand(v, instance=instance, env=env) for k, v in lines if k == "ExecStartPre"]
    start = expand(settings["ExecStart"], instance=instance, env=env)
    assert start[-1] == str(mnt) and start[-2] == str(src)
    for cmd in pre:
        subprocess.run(cmd, check=True, timeout=60)
    assert mnt.is_dir()  # ExecStartPre made the mountpoint

    name = f"vfile-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        child_env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"}
        proc = subprocess.Popen(start, env=child_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            got = receive(sock, "READY=1")
            assert is_mounted(mnt)  # READY means serving
            assert (mnt / "hello.txt").read_text() == "hi"
            assert any(g.startswith("STATUS=serving") for g in got)
            receive(sock, "WATCHDOG=1")
            receive(sock, "WATCHDOG=1")  # and again: a loop, not a one-off
            proc.send_signal(signal.SIGTERM)  # `systemctl stop`
            receive(sock, "STOPPING=1")
            assert proc.wait(30) == 0
            assert not is_mounted(mnt)
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            assert all(json.loads(ln)["level"] for ln in stderr.splitlines())  # JSON logs
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
            for k, v in lines:
                if k == "ExecStopPost":  # '-': its failure (nothing mounted) is ignored
                    subprocess.run(expand(v.lstrip("-"), instance=instance, env=env),
                                   capture_output=True, check=False, timeout=60)
            force_unmount(mnt)




@contextmanager
def helper_installed() -> Iterator[None]:
    target = VENV_BIN / "mount.fuse.vfile"
    assert target.exists(), "pip install -e . installs the mount.fuse.vfile console script"
    if HELPER.is_symlink() and HELPER.resolve() == target.resolve():
        yield  # already installed, by an operator or another run: leave it
        return
    assert not HELPER.exists(), f"{HELPER} exists and is not this checkout's helper"
    HELPER.symlink_to(target)
    try:
        yield
    finally:
        HELPER.unlink()


def test_fstab_line_with_mount_a_and_mount_mountpoint(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    for d in (src, mnt):
        d.mkdir()
    (src / "hello.txt").write_text("hi")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# a vfile mount\n{src} {mnt} fuse.vfile defaults,_netdev,nofail,"
                     f"state_dir={state},fail_mode=closed,timeout=3,"
                     f"log_file={tmp_path / 'server.log'},x-systemd.requires=network.target"
                     f" 0 0\n")
    mount = shutil.which("mount", path="/usr/bin:/bin")
    umount = shutil.which("umount", path="/usr/bin:/bin")
    assert mount and umount
    try:
        with helper_installed():
            res = subprocess.run([mount, "-a", "-T", str(fstab)], capture_output=True,
                                 text=True, check=False, timeout=90)
            assert res.returncode == 0, res.stderr + (tmp_path / "server.log").read_text()
            assert is_mounted(mnt)  # serving when mount -a returns
            assert (mnt / "hello.txt").read_text() == "hi"
            status = json.loads(subprocess.run(vfile_cmd("status", str(mnt), "--json"),
                                               capture_output=True, text=True, check=True,
                                               timeout=60).stdout)
            assert status["mount"]["source"] == str(src)
            assert status["mount"]["state_dir"] == str(state)
            default = next(p for p in status["profiles"] if p["name"] == "default")
            assert default["fail_mode"] == "closed" and default["deadline_s"] == 3
            # mount -a again: already mounted, nothing to do, still fine.
            res = subprocess.run([mount, "-a", "-T", str(fstab)], capture_output=True,
                                 text=True, check=False, timeout=90)
            assert res.returncode == 0, res.stderr
            assert subprocess.run([umount, str(mnt)], check=False, timeout=60).returncode == 0
            assert not is_mounted(mnt)
            assert wait_gone(mnt), "the server did not exit after umount"

            res = subprocess.run([mount, "-T", str(fstab), str(mnt)], capture_output=True,
                                 text=True, check=False, timeout=90)
            assert res.returncode == 0, res.stderr
            assert is_mounted(mnt)
            assert subprocess.run([umount, str(mnt)], check=False, timeout=60).returncode == 0
            assert wait_gone(mnt)

            # A bad option: the helper's usage error, nothing mounted.
            fstab.write_text(f"{src} {mnt} fuse.vfile defaults,colour=blue 0 0\n")
            res = subprocess.run([mount, "-a", "-T", str(fstab)], capture_output=True,
                                 text=True, check=False, timeout=90)
            assert res.returncode != 0 and "unknown mount option 'colour=blue'" in res.stderr
            assert not is_mounted(mnt)
    finally:
        force_unmount(mnt)
        for pid in server_pids(mnt):
            os.kill(pid, signal.SIGKILL)
