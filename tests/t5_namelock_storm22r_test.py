"""Review r22 of nl22's path-based name lock (vfile/passthrough/namelock.py): a storm.

Several users at once move directories (the mount root's children and deeper ones, into
each other and back, exchanged), move, link and unlink files across those directories
(hard links whose names live in directories being moved), and create files, through a
scanning mount whose appliance refuses (every file must keep an entry). Nothing may hang
(no deadlock of holds, nested survivor holds or waiting moves), and afterwards every file
has a journal entry under one of its names.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted
from outage import running_appliance, write_config

from vfile.journal import Journal
from vfile.passthrough.syscalls import RENAME_EXCHANGE, renameat2

pytestmark = pytest.mark.mount

WORKERS = 6
OPS = 400
DIRS = ("a", "b", "c", "a/x", "b/y")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Path, tuple[str, ...]]]:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    for d in DIRS:
        (src / d).mkdir(parents=True)
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    with running_appliance(fault="refuse") as app:
        yield src, mnt, ("--appliance", app.url, "--config", str(cfg),
                         "--state-dir", str(state))


def _dirs(mnt: Path) -> list[Path]:
    out = []
    for root, dirs, _files in os.walk(mnt):
        out.extend(Path(root) / d for d in dirs)
    return [mnt, *out]


def _files(mnt: Path) -> list[Path]:
    out = []
    for root, _dirs, files in os.walk(mnt):
        out.extend(Path(root) / f for f in files)
    return out


def _storm(mnt: Path, seed: int, errors: list[BaseException]) -> None:
    rnd = random.Random(seed)
    try:
        for i in range(OPS):
            dirs, files = _dirs(mnt), _files(mnt)
            op = rnd.randrange(7)
            try:
                if op == 0 or not files:  # create
                    (rnd.choice(dirs) / f"f{seed}_{i}").write_bytes(b"x" * rnd.randrange(64))
                elif op == 1:  # a directory moved (a root child or deeper), maybe into another
                    d = rnd.choice(dirs[1:] or dirs)
                    os.rename(d, rnd.choice(dirs) / f"d{seed}_{i}")
                elif op == 2:  # two directories exchanged
                    d1, d2 = rnd.choice(dirs[1:] or dirs), rnd.choice(dirs[1:] or dirs)
                    fd1, fd2 = os.open(d1.parent, os.O_PATH), os.open(d2.parent, os.O_PATH)
                    try:
                        renameat2(fd1, os.fsencode(d1.name), fd2, os.fsencode(d2.name),
                                  RENAME_EXCHANGE)
                    finally:
                        os.close(fd1)
                        os.close(fd2)
                elif op == 3:  # a hard link in another directory
                    os.link(rnd.choice(files), rnd.choice(dirs) / f"l{seed}_{i}")
                elif op == 4:  # a file moved across directories (maybe onto another name)
                    target = rnd.choice(files) if rnd.random() < 0.3 else \
                        rnd.choice(dirs) / f"m{seed}_{i}"
                    os.rename(rnd.choice(files), target)
                elif op == 5:
                    os.unlink(rnd.choice(files))
                else:  # a file and a directory exchanged
                    f, d = rnd.choice(files), rnd.choice(dirs[1:] or dirs)
                    fd1, fd2 = os.open(f.parent, os.O_PATH), os.open(d.parent, os.O_PATH)
                    try:
                        renameat2(fd1, os.fsencode(f.name), fd2, os.fsencode(d.name),
                                  RENAME_EXCHANGE)
                    finally:
                        os.close(fd1)
                        os.close(fd2)
            except OSError as err:  # the storm's own races: gone, moved, into itself, a
                # name that became a directory (link: EPERM)
                if err.errno not in (errno.ENOENT, errno.EINVAL, errno.ENOTEMPTY,
                                     errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                                     errno.EBUSY, errno.EXDEV, errno.EPERM):
                    raise OSError(err.errno, f"op {op}: {err}") from err
    except BaseException as err:
        errors.append(err)


def test_a_storm_of_moves_links_and_unlinks_neither_hangs_nor_loses_an_entry(
        env: tuple[Path, Path, tuple[str, ...]]) -> None:
    src, mnt, args = env
    state = Path(args[-1])
    with mounted(src, mnt, *args):
        errors: list[BaseException] = []
        workers = [threading.Thread(target=_storm, args=(mnt, seed, errors), daemon=True)
                   for seed in range(WORKERS)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 300  # generous: 2 cores, 6 people
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        stuck = [w.name for w in workers if w.is_alive()]
        assert not stuck, f"name operations hung: {stuck}"
        assert not errors, errors
        os.listdir(mnt)  # still serving
    journal = Journal.open(state, readonly=True)
    try:
        deferred = {e.path for e in journal.list_deferred()}
    finally:
        journal.close()
    by_file: dict[tuple[int, int], list[str]] = {}
    for root, _dirs, files in os.walk(src):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            rel = os.path.relpath(os.path.join(root, name), src)
            by_file.setdefault((st.st_dev, st.st_ino), []).append(rel)
    lost = [names for names in by_file.values() if not deferred.intersection(names)]
    assert lost == [], f"files with no entry under any name: {lost}"
