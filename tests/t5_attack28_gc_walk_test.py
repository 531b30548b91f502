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

import pytest
from gcpatch import collections, collector_patch
from mounting import mounted, wait_for
from outage import status
from serverpatches import patched

pytestmark = pytest.mark.mount

#: the collection every half second, from a second after the start; a directory named
#: `unreadable` fails to list with EMFILE (a server out of descriptors)
PATCH = collector_patch("""
    def scandir(path="."):
        if isinstance(path, str) and os.path.basename(path) == "unreadable":
            raise OSError(errno.EMFILE, "Too many open files")
        return real_scandir(path)
""")


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
        wait_for("the verdicts stored", lambda: status(mnt)["journal"]["verdicts"] >= 10, 30)
        if how == "root-replaced":
            os.rename(src, tmp_path / "moved")
            src.mkdir()  # empty, at the source's path; the mount still serves the moved one
        runs = collections(server.log())
        wait_for("two collections", lambda: collections(server.log()) >= runs + 2, 30)
        assert status(mnt)["journal"]["verdicts"] >= 10, server.log()[-3000:]
        for name in names:
            assert (mnt / name).read_bytes() == b"clean %s\n" % name.encode()

