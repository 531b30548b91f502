"""Attack review a29: the source directory replaced DURING the verdict collection's walk.

a28 made a walk of a path that is not the mount's source directory (moved away, an
empty one put in its place, a file system mounted over it) collect by signature
version only; it checked the path before the walk. The walk goes on by path: with the
source moved away and an empty directory put at its path while it walked, every
directory it had not listed yet was gone from its view (skipped as removed), and the
verdicts of the files below them were taken for garbage (a rescan each; refused
meanwhile by a `closed` profile in an outage). Now the walk checks the path again
when it is over. The swap is made by a patch in the server, at the walk's listing of
the directory `swap` (so it happens mid-walk, deterministically); the collection's
timing is patched as in t5_attack28_gc_walk_test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gcpatch import collections, collector_patch
from mounting import mounted, wait_for
from outage import status
from serverpatches import patched

pytestmark = pytest.mark.mount

PATCH = collector_patch("""
    swapped = []

    def scandir(path="."):
        if isinstance(path, str) and os.path.basename(path) == "swap" and not swapped:
            root = os.path.dirname(path)
            os.rename(root, root + ".moved")  # the mount serves it on, by its descriptor
            os.mkdir(root)
            swapped.append(root)
            logging.getLogger("vfile").warning("test patch: source swapped mid-walk")
        return real_scandir(path)
""")


def test_source_replaced_during_the_walk_collects_none_of_its_verdicts(tmp_path: Path
                                                                        ) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    (src / "swap").mkdir(parents=True)
    mnt.mkdir()
    names = [f"f{i}.txt" for i in range(5)] + [f"swap/g{i}.txt" for i in range(5)]
    for name in names:
        (src / name).write_bytes(b"clean %s\n" % name.encode())
    with mounted(src, mnt, "--state-dir", str(state), env=patched(tmp_path, PATCH)) as server:
        for name in names:
            assert (mnt / name).read_bytes() == b"clean %s\n" % name.encode()
        wait_for("the verdicts stored", lambda: status(mnt)["journal"]["verdicts"] >= 10, 30)
        runs = collections(server.log())
        wait_for("two collections", lambda: collections(server.log()) >= runs + 2, 30)
        assert "source swapped mid-walk" in server.log(), server.log()[-3000:]
        # Before a29: 5 (the files below `swap`, never listed, collected).
        assert status(mnt)["journal"]["verdicts"] >= 10, server.log()[-3000:]
        for name in names:
            assert (mnt / name).read_bytes() == b"clean %s\n" % name.encode()
    os.rmdir(src)
    os.rename(tmp_path / "src.moved", src)  # (for the fixtures' cleanup)

