"""One stalled name operation must not hold up the mount's other renames (nl22).

A file rename waits for its intent's fsync on a state disk whose fsyncs are held
(`slow_fsync_disk`). Before nl22 it held the mount's one name lock shared; a directory
rename anywhere then waited for it exclusively, and every later rename, link and unlink
of the mount waited behind that one until the thaw, even one that needs no journal
fsync. Now a directory move excludes only the name operations on paths at or below
what it moves (vfile.passthrough.namelock): the exchange of the stalled rename's own
directory still waits for it (loss21's guarantee, tests/t5_race21_dirs_test.py), an
operation in an unrelated directory goes on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from lifecycle import Tree, wait_until
from outage import running_appliance, signature_version, unaccounted
from queuedrace import exchange, frozen_until_thawed, in_thread, settled
from statedisks import mounted_safe_on, slow_fsync_disk

pytestmark = pytest.mark.mount

#: long: nothing here is timed, only "did it return at all while the fsync is held"
DEADLINE = 60.0
#: "did not wait for the thaw": far above what a rename takes on a loaded machine
BOUND = 30.0


def _prepare(src: Path) -> None:
    # d0 and d1 in a directory of their own: the kernel locks the parent of a directory
    # exchanged, and a lookup there that misses its cache waits for that lock.
    for d in ("a/d0", "a/d1", "e", "g/x"):
        (src / d).mkdir(parents=True)
    (src / "a/d0/w").write_bytes(b"the file whose rename waits for the journal\n")
    # A second name: a file with one name and a clean verdict is renamed without an
    # fsync since rs23 (its verdict follows it, vfile.filter.keeping); this one is not.
    os.link(src / "a/d0/w", src / "a/d0/w2")
    (src / "a/d1/old").write_bytes(b"a file in d1\n")
    (src / "e/f").write_bytes(b"a file in an unrelated directory\n")
    os.symlink("f", src / "e/s")


UNRELATED: dict[str, Callable[[Path], None]] = {
    # none of them waits for a journal fsync (a symlink has no intent; an unlink's
    # record is tier 2: committed, not fsynced)
    "rename": lambda mnt: os.rename(mnt / "e/s", mnt / "e/t"),
    "link": lambda mnt: os.link(mnt / "e/s", mnt / "e/s2", follow_symlinks=False),
    "unlink": lambda mnt: os.unlink(mnt / "e/f"),
}


@pytest.mark.parametrize("op", sorted(UNRELATED))
def test_a_stalled_rename_holds_up_only_the_directories_it_names(tree: Tree, op: str) -> None:
    _prepare(tree.source)
    mnt = tree.mountpoint
    errors: list[str] = []
    with running_appliance() as app, slow_fsync_disk(tree.root) as (fs, below), \
            mounted_safe_on(tree, app, fs, DEADLINE):
        for name in ("a/d0/w", "a/d1/old", "e/f"):  # scanned: no open below waits on a scan
            (mnt / name).read_bytes()
        wait_until(lambda: settled(mnt), "the warm-up settled", DEADLINE)
        # The image of the state disk lives on `below`: its fsyncs wait for the thaw.
        with frozen_until_thawed(below / "statefs.img") as thaw:
            stalled = in_thread(lambda: os.rename(mnt / "a/d0/w", mnt / "a/d0/v"), errors)
            assert stalled.is_alive(), "the file rename did not wait for its intent's fsync"
            exchanging = in_thread(lambda: exchange(mnt / "a", "d0", "d1"), errors)
            elsewhere = in_thread(lambda: os.rename(mnt / "g/x", mnt / "g/y"), errors)
            unrelated = threading.Thread(target=UNRELATED[op], args=(mnt,), daemon=True)
            unrelated.start()
            unrelated.join(BOUND)
            waited = unrelated.is_alive()
            # loss21: the exchange of the stalled rename's own directory waits for it
            exchange_waited = exchanging.is_alive() and stalled.is_alive()
            thaw()
            for th in (stalled, exchanging, elsewhere, unrelated):
                th.join(DEADLINE)
                assert not th.is_alive()
        assert not waited, f"the {op} in an unrelated directory waited for the thaw"
        assert exchange_waited, "the exchange of d0 went on under a stalled rename in it"
        assert errors == []
        # The rename came first: `v` moved with its directory, now named d1.
        assert (mnt / "a/d1/v").exists() and not (mnt / "a/d0/v").exists()
        assert (mnt / "a/d0/old").exists() and (mnt / "g/y").is_dir()
        wait_until(lambda: settled(mnt), "every intent ended", DEADLINE)
        state = fs / "state"
        # Saved every probe interval: read before that, "" counts every verdict out (r22).
        wait_until(lambda: signature_version(state), "the signature version saved", DEADLINE)
        assert unaccounted(tree.source, state, signature_version(state)) == []
