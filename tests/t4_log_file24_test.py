"""A background server's `--log-file` is opened like the audit log (x24).

`vfile mount` (root, over other people's files) opened its server's log with
`open(path, "ab")`: following a symlink planted at the name (root then appended the
server's log lines, which name files, to whatever file the link pointed at) and
creating it with the caller's umask (0644: any user read which files were opened).
Now: O_NOFOLLOW (a symlink is refused, exit 3), created 0600, an existing log of ours
tightened to 0600, and only in a directory no other user may write (in a shared one a
user can put a file or a hard link of their own at the name first)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from lifecycle import READER_UID
from mounting import force_unmount, is_mounted, server_pids, vfile_cmd, wait_gone
from otheruser import searchable_checkout

from vfile.errors import Exit

pytestmark = pytest.mark.mount


def _mount(source: Path, mountpoint: Path, log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vfile_cmd("mount", "--no-scan", str(source), str(mountpoint),
                                    "--log-file", str(log)),
                          capture_output=True, text=True, check=False, timeout=60)


def _down(mountpoint: Path) -> None:
    if is_mounted(mountpoint):
        subprocess.run(vfile_cmd("unmount", str(mountpoint)), check=False, timeout=60,
                       capture_output=True)
    force_unmount(mountpoint)
    assert wait_gone(mountpoint), "the server did not exit"
    for pid in server_pids(mountpoint):
        os.kill(pid, 9)


def test_a_symlink_at_the_log_file_name_is_refused(source: Path, mountpoint: Path,
                                                  tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "server.log").symlink_to(victim)
    try:
        res = _mount(source, mountpoint, logs / "server.log")
        assert res.returncode == int(Exit.CONFIG), res.stderr
        assert "log file" in res.stderr and "symlink" in res.stderr, res.stderr
        assert not is_mounted(mountpoint)
    finally:
        _down(mountpoint)
    assert victim.read_text() == "root's file\n"


def test_the_log_file_is_private(source: Path, mountpoint: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "logs" / "deeper" / "server.log"
    old = tmp_path / "old.log"  # an older vfile's 0644 log, appended to
    old.write_text("")
    old.chmod(0o644)
    os.umask(0o022)
    try:
        for log in (fresh, old):
            res = _mount(source, mountpoint, log)
            assert res.returncode == 0, res.stderr
            _down(mountpoint)
            assert stat.S_IMODE(log.stat().st_mode) == 0o600, oct(log.stat().st_mode)
        assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o755
    finally:
        _down(mountpoint)


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o775])
def test_a_log_file_in_a_directory_others_may_write_is_refused(
        source: Path, mountpoint: Path, tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, -1, 1001)  # a group of other users (root's own group is root)
    shared.chmod(mode)
    try:
        res = _mount(source, mountpoint, shared / "server.log")
        assert res.returncode == int(Exit.CONFIG), res.stderr
        assert "writable by other users" in res.stderr, res.stderr
        assert not (shared / "server.log").exists()
    finally:
        _down(mountpoint)


def test_a_symlinked_parent_in_a_directory_others_may_write_is_refused(
        source: Path, mountpoint: Path, tmp_path: Path) -> None:
    """r25: the checks were on the directory the parent path ends at, after following
    symlinks: a user's symlink in a shared directory (/tmp) chose which of root's
    directories the log went to, and root appended to (and chmodded 0600) a file of
    its own there with the log's name."""
    victims = tmp_path / "etc"
    victims.mkdir()
    victim = victims / "server.log"
    victim.write_text("root's file\n")
    victim.chmod(0o644)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "logs").symlink_to(victims)  # planted by another user
    os.lchown(shared / "logs", 1001, 1001)
    try:
        res = _mount(source, mountpoint, shared / "logs" / "server.log")
        assert res.returncode == int(Exit.CONFIG), res.stderr
        assert "symlink" in res.stderr, res.stderr
    finally:
        _down(mountpoint)
    assert victim.read_text() == "root's file\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    try:  # nor is a missing parent made in root's directory the symlink points at
        res = _mount(source, mountpoint, shared / "logs" / "new" / "server.log")
        assert res.returncode == int(Exit.CONFIG), res.stderr
    finally:
        _down(mountpoint)
    assert not (victims / "new").exists()


def test_a_symlinked_parent_in_root_s_own_directory_is_followed(
        source: Path, mountpoint: Path, tmp_path: Path) -> None:
    """(/var/run -> /run: a symlink root made is root's choice.)"""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    try:
        res = _mount(source, mountpoint, tmp_path / "via" / "server.log")
        assert res.returncode == 0, res.stderr
    finally:
        _down(mountpoint)
    assert stat.S_IMODE((real / "server.log").stat().st_mode) == 0o600


def test_a_user_s_log_below_a_directory_it_may_only_search(tmp_path: Path) -> None:
    """The walk (r25) needs only search permission on each directory on the way, as
    the kernel's own lookup did: a user's log below a 0711 directory (a home, a
    /var/lib) is opened."""
    outer = Path(tempfile.mkdtemp(prefix="vfile-r25-"))  # (/tmp: others may reach it)
    try:
        outer.chmod(0o711)
        mine = outer / "mine"
        mine.mkdir()
        os.chown(mine, READER_UID, READER_UID)
        with searchable_checkout():
            res = subprocess.run(
                ["setpriv", f"--reuid={READER_UID}", f"--regid={READER_UID}",
                 "--clear-groups", sys.executable, "-c",
                 "import sys; from vfile.observe.private import open_private_append; "
                 "open_private_append(sys.argv[1])", str(mine / "server.log")],
                capture_output=True, text=True, check=False, timeout=60)
        assert res.returncode == 0, res.stderr
        assert (mine / "server.log").stat().st_uid == READER_UID
    finally:
        shutil.rmtree(outer)
