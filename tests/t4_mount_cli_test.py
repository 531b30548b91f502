"""`vfile mount` / `vfile unmount` as a user runs them: background start,
bad starts with their exit codes (and nothing left mounted), signals."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from mounting import force_unmount, is_mounted, mounted, server_pids, vfile_cmd, wait_gone

from vfile.errors import Exit

pytestmark = pytest.mark.mount


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vfile_cmd(*args), capture_output=True, text=True, check=False,
                          timeout=60, env={**os.environ, **(env or {})})




def test_background_mount_serves_until_unmount(source: Path, mountpoint: Path,
                                               tmp_path: Path) -> None:
    (source / "hello.txt").write_text("hi")
    log = tmp_path / "server.log"
    try:
        res = run("mount", str(source), str(mountpoint), "--log-file", str(log))
        assert res.returncode == 0, res.stderr
        assert is_mounted(mountpoint)  # serving when `vfile mount` returns
        assert (mountpoint / "hello.txt").read_text() == "hi"
        assert server_pids(mountpoint)
        res = run("unmount", str(mountpoint))
        assert res.returncode == 0, res.stderr
        assert not is_mounted(mountpoint)
        assert wait_gone(mountpoint), "the server did not exit after unmount"
    finally:
        force_unmount(mountpoint)
        for pid in server_pids(mountpoint):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("foreground", [False, True])
def test_an_unreachable_appliance_is_named_at_mount_time(source: Path, mountpoint: Path,
                                                        tmp_path: Path, foreground: bool) -> None:
    """Fail-safe start, but not a silent one: one stderr line per dead appliance, with the
    fail modes the mount now serves in."""
    dead = "clamd://nohost.invalid:1"
    args = ["--state-dir", str(tmp_path / "state"), "-a", dead, "--fail-mode", "closed"]
    try:
        if foreground:
            with mounted(source, mountpoint, *args) as server:
                err = server.log()
        else:
            res = run("mount", str(source), str(mountpoint), *args,
                      "--log-file", str(tmp_path / "server.log"))
            assert res.returncode == 0, res.stderr
            err = res.stderr
            assert run("unmount", str(mountpoint)).returncode == 0
        lines = [ln for ln in err.splitlines() if dead in ln and "unreachable" in ln]
        assert len(lines) == 1, err
        assert "fail modes" in lines[0] and "default: closed" in lines[0]
    finally:
        force_unmount(mountpoint)


def _bad(res: subprocess.CompletedProcess[str], code: Exit, words: str) -> None:
    assert res.returncode == int(code), res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfile: ") and words in lines[0], res.stderr


@pytest.mark.parametrize("foreground", [False, True])
def test_bad_starts(source: Path, mountpoint: Path, tmp_path: Path, foreground: bool) -> None:
    fg = ["--foreground"] if foreground else []
    (tmp_path / "file").write_text("x")
    (source / "inner").mkdir()
    (mountpoint / "inner").mkdir()
    cases = [
        ([str(tmp_path / "nope"), str(mountpoint)], Exit.SOURCE, "does not exist"),
        ([str(tmp_path / "file"), str(mountpoint)], Exit.SOURCE, "not a directory"),
        ([str(source), str(tmp_path / "nope")], Exit.MOUNTPOINT, "does not exist"),
        ([str(source), str(tmp_path / "file")], Exit.MOUNTPOINT, "not a directory"),
        ([str(source), str(source / "inner")], Exit.MOUNTPOINT, "overlap"),
        ([str(mountpoint / "inner"), str(mountpoint)], Exit.MOUNTPOINT, "overlap"),
        ([str(source), str(source)], Exit.MOUNTPOINT, "overlap"),
    ]
    for args, code, words in cases:
        _bad(run("mount", *fg, *args), code, words)
    _bad(run("mount", *fg, str(source), str(mountpoint), env={"VFILE_FUSE_DEVICE": "/nonexistent"}),
         Exit.FUSE, "FUSE is not available")
    _bad(run("mount", *fg, "-o", "suid", str(source), str(mountpoint)), Exit.USAGE, "suid")
    assert not is_mounted(mountpoint)
    assert not is_mounted(source / "inner")


def test_busy_mountpoint_and_unmount_of_a_non_vfile_dir(source: Path, mountpoint: Path,
                                                        tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with mounted(source, mountpoint):
        _bad(run("mount", str(other), str(mountpoint)), Exit.MOUNTPOINT, "busy")
        _bad(run("mount", "--foreground", str(other), str(mountpoint)), Exit.MOUNTPOINT, "busy")
        assert is_mounted(mountpoint)  # the first mount is unharmed
    _bad(run("unmount", str(other)), Exit.MOUNTPOINT, "not a vfile mount")
    _bad(run("unmount", "/proc"), Exit.MOUNTPOINT, "not a vfile mount")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(source: Path, mountpoint: Path, sig: signal.Signals) -> None:
    with mounted(source, mountpoint) as server:
        (mountpoint / "f").write_text("x")
        server.proc.send_signal(sig)
        assert server.proc.wait(15) == 0, server.log()
        assert not is_mounted(mountpoint)
        assert (source / "f").read_text() == "x"


def test_version() -> None:
    res = run("version")
    assert res.returncode == 0 and res.stdout.strip()
