"""git through a scanning mount, against the same commands in a native directory.

git opens with O_NOFOLLOW (.gitignore, the index, loose objects), renames
lock files onto their targets, mmaps packs and fsyncs: before issue 18 `git
status` warned "unable to access '.gitignore': Too many levels of symbolic
links" and ignored the file. With fixed dates and identity both places must
produce the same commits, byte for byte, and git must print no warning.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import Pair, Scanning, run, scanning_mount

pytestmark = pytest.mark.mount

ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "A U Thor", "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "C O Mitter", "GIT_COMMITTER_EMAIL": "committer@example.com",
    "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z", "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z",
    "LC_ALL": "C",
}


@pytest.fixture(scope="module")
def scanning() -> Iterator[Scanning]:
    with scanning_mount() as s:
        yield s


def git(*args: str, cwd: Path) -> str:
    """Run git; any stderr at all (a warning) fails the test."""
    res = run(["git", *args], cwd=cwd, env=ENV)
    assert res.stderr == "", f"git {' '.join(args)} in {cwd} warned:\n{res.stderr}"
    return res.stdout


def make_origin(root: Path) -> Path:
    """A small repository with what trips filesystems: .gitignore, an executable,
    a symlink, a subdirectory, several commits and a tag."""
    origin = root / "origin"
    origin.mkdir()
    git("init", "-q", "-b", "main", cwd=origin)
    (origin / ".gitignore").write_text("*.log\nbuild/\n")
    (origin / "README").write_text("hello\n")
    (origin / "src").mkdir()
    for i in range(20):
        (origin / "src" / f"m{i}.py").write_text(f"x = {i}\n" * (i + 1))
    run_sh = origin / "run.sh"
    run_sh.write_text("#!/bin/sh\necho hi\n")
    run_sh.chmod(0o755)
    os.symlink("src/m1.py", origin / "link")
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "first", cwd=origin)
    (origin / "README").write_text("hello again\n")
    git("commit", "-q", "-am", "second", cwd=origin)
    git("tag", "v1", cwd=origin)
    return origin


def session(place: Path, origin: Path) -> dict[str, str]:
    """clone, status, a commit, gc and fsck --strict: what each step printed."""
    git("clone", "-q", "--no-local", str(origin), "clone", cwd=place)
    repo = place / "clone"
    out = {"status_clean": git("status", "--porcelain", "--ignored", cwd=repo)}
    (repo / "debug.log").write_text("ignored\n")  # ignored only if .gitignore was read
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_bytes(b"\0" * 100)
    (repo / "src" / "m3.py").write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    out["status_dirty"] = git("status", "--porcelain", cwd=repo)
    out["status_ignored"] = git("status", "--porcelain", "--ignored", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "third", cwd=repo)
    out["head"] = git("rev-parse", "HEAD", "HEAD^{tree}", cwd=repo)
    out["log"] = git("log", "--format=%H %s", "--all", cwd=repo)
    git("gc", "-q", "--prune=now", cwd=repo)
    out["fsck"] = git("fsck", "--strict", "--full", "--no-dangling", cwd=repo)
    out["count"] = git("count-objects", "-v", cwd=repo).split("size-pack")[0]
    out["origin_head"] = git("rev-parse", "HEAD", cwd=origin)
    out["files"] = git("ls-files", "-s", cwd=repo)
    out["status_after_gc"] = git("status", "--porcelain", cwd=repo)
    out["exec_bit"] = oct(stat.S_IMODE(os.stat(repo / "run.sh").st_mode) & 0o111)
    out["link"] = os.readlink(repo / "link")
    return out


def test_git_clone_status_commit_gc_fsck(scanning: Scanning) -> None:
    pair: Pair = scanning.pair()
    # The origin is made in each place too (init, add, commit through the mount).
    native, mounted = (session(place, make_origin(place)) for place in pair.both())
    assert mounted == native
    # ... and it is the expected repository: the .gitignore was honoured
    assert "!! build/" in mounted["status_ignored"] and "!! debug.log" in mounted["status_ignored"]
    assert mounted["status_dirty"] == " M src/m3.py\n?? new.txt\n"
    assert mounted["status_after_gc"] == ""
    assert mounted["exec_bit"] == "0o111" and mounted["link"] == "src/m1.py"
    assert "third" in mounted["log"] and "in-pack: 0" not in mounted["count"]
