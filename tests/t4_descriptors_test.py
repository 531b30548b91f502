"""Descriptors through a real mount (issue 20): a server under a low hard
descriptor limit walks and opens thousands of files, and its control plane
answers while everything else in it is out of descriptors."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from lifecycle import Tree, cli
from mounting import mounted, server_pids

pytestmark = pytest.mark.mount

#: "a hard limit of a few hundred" (containers, some service managers)
LOW_LIMIT = 256
DIRS, PER_DIR = 30, 100  # 3,000 files, 3,030 inodes: ten times the limit


def _fill(source: Path) -> list[Path]:
    files = []
    for d in range(DIRS):
        sub = source / f"d{d:02}" / "sub"
        sub.mkdir(parents=True)
        for f in range(PER_DIR):
            path = sub / f"f{f:03}.txt"
            path.write_bytes(f"file {d}/{f}\n".encode())
            files.append(path)
    return files


def _server_fds(mnt: Path) -> int:
    (pid,) = server_pids(mnt)
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_walk_and_open_thousands_of_files_under_a_low_hard_limit(tree: Tree) -> None:
    files = _fill(tree.source)
    with mounted(tree.source, tree.mountpoint, "--state-dir", str(tree.state),
                 nofile=LOW_LIMIT):
        seen = 0
        for dirpath, _dirs, names in os.walk(tree.mountpoint):
            for name in names:
                path = Path(dirpath) / name
                rel = path.relative_to(tree.mountpoint)
                assert path.read_bytes() == (tree.source / rel).read_bytes()
                seen += 1
        assert seen == len(files)
        # Again, by stat and open, now that the kernel knows every inode.
        for path in files:
            rel = path.relative_to(tree.source)
            assert (tree.mountpoint / rel).stat().st_size == path.stat().st_size
        fds = _server_fds(tree.mountpoint)
        assert fds < LOW_LIMIT, fds
        res = cli("status", str(tree.mountpoint), "--json")
        assert res.returncode == 0, res.stderr


def test_control_plane_answers_while_the_server_is_out_of_descriptors(
        tree: Tree) -> None:
    limit = 128
    files = [tree.source / f"f{i:04}.txt" for i in range(limit * 2)]
    for i, path in enumerate(files):
        path.write_text(f"distinct {i}\n")
    held: list[int] = []
    with mounted(tree.source, tree.mountpoint, "--state-dir", str(tree.state),
                 nofile=limit):
        try:
            failed = None
            for path in files:  # hold files open until the server has no descriptor left
                try:
                    held.append(os.open(tree.mountpoint / path.name, os.O_RDONLY))
                except OSError as err:
                    failed = err
                    break
            assert failed is not None, "the server never ran out of descriptors"
            assert failed.errno in (errno.EMFILE, errno.ENFILE), failed
            # Out of descriptors now; the control plane still answers, more than once.
            for _ in range(3):
                res = cli("status", str(tree.mountpoint), "--json", timeout=60)
                assert res.returncode == 0, res.stderr
                assert json.loads(res.stdout)["mount"]["source"] == str(tree.source)
        finally:
            for fd in held:
                os.close(fd)
        # And the mount recovers once the files are closed.
        assert (tree.mountpoint / files[-1].name).read_text() == files[-1].read_text()
        res = cli("status", str(tree.mountpoint), "--json")
        assert res.returncode == 0, res.stderr
