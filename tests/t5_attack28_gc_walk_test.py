"""Attack review a28: the verdict collection (vfile.filter.verdict_gc) walks the source by
its path, the mount serves it by the descriptor it opened at the start. With the source
directory moved away and an empty one put at its path while mounted (or a file system
mounted over it), the mount went on serving the real files, and the collection walked
the empty directory and took every verdict of the real files for garbage: each file
scanned again at its next open, and refused meanwhile by a `closed` profile during an
appliance outage. A directory the walk could not read (EMFILE, EIO) dropped the verdicts
below it the same way. Now a walk that is not of the mount's source directory, or not
whole, collects by signature version only. The collection's timing is patched (its first
pass 5 minutes after the start); the directories are real."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mounting import mounted, wait_for
from serverpatches import patched

from vfile import control

pytestmark = pytest.mark.mount

#: the collection every half second, from a second after the start; a directory named
#: `unreadable` fails to list with EMFILE (a server out of descriptors)
PATCH = """
    import errno
    import logging
    import os
    import types
    from vfile.filter import verdict_gc

    real_init = verdict_gc.VerdictCollector.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._first_delay, self._interval = 1.0, 0.5
        logging.getLogger("vfile").warning("test patch: collections every 0.5 s")

    verdict_gc.VerdictCollector.__init__ = init
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, str) and os.path.basename(path) == "unreadable":
            raise OSError(errno.EMFILE, "Too many open files")
        return real_scandir(path)

    # Only the collection's walk: the rest of the server keeps the real os module
    verdict_gc.os = types.SimpleNamespace(**{**vars(os), "scandir": scandir})
    real_collect = verdict_gc.collect

    async def collect(*args, **kwargs):
        done = await real_collect(*args, **kwargs)
        logging.getLogger("vfile").warning("test patch: a collection ran: %s", done)
        return done

    verdict_gc.collect = collect
"""


def _status(mnt: Path) -> dict[str, Any]:
    got: dict[str, Any] = control.call(str(mnt), "status", timeout=30)
    return got


@pytest.mark.parametrize("how", ["root-replaced", "unreadable-dir"])
def test_a_walk_that_misses_files_collects_none_of_their_verdicts(tmp_path: Path,
                                                                   how: str) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    (src / "unreadable").mkdir(parents=True)
    mnt.mkdir()
    names = [f"f{i}.txt" for i in range(5)] + [f"unreadable/g{i}.txt" for i in range(5)]
    for name in names:
        (src / name).write_bytes(b"clean %s\n" % name.encode())
    with mounted(src, mnt, "--state-dir", str(state), env=patched(tmp_path, PATCH)) as server:
        for name in names:
            assert (mnt / name).read_bytes() == b"clean %s\n" % name.encode()
        wait_for("the verdicts stored", lambda: _status(mnt)["journal"]["verdicts"] >= 10, 30)
        if how == "root-replaced":
            os.rename(src, tmp_path / "moved")
            src.mkdir()  # empty, at the source's path; the mount still serves the moved one
        runs = _collections(server.log())
        wait_for("two collections", lambda: _collections(server.log()) >= runs + 2, 30)
        assert _status(mnt)["journal"]["verdicts"] >= 10, server.log()[-3000:]
        for name in names:
            assert (mnt / name).read_bytes() == b"clean %s\n" % name.encode()


def _collections(log: str) -> int:
    return log.count("test patch: a collection ran")
