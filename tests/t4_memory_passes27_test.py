"""Memory over repeated passes of a tree through a real mount (m27).

r26 saw the scanning server end 72-89 MiB above `--no-scan` after `tar x` of
100,000 files; m27 (bench/mempasses.py, docs/reliability.md) found that a bound,
not growth: the gate's verdict cache (one entry per file the kernel knows,
65,536 at most) and the inode table (one record per known inode) fill with the
tree, and both empty when the kernel forgets the removed files. What `rm -rf`
must leave behind is what the first pass left: this test runs the same tree in
and out several times and holds every pass to the first one, by structure size
and by the server's live objects after a full collection (counts, not timing;
a per-file leak of one object a pass shows as `FILES` objects).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from filtering import filtering
from mounting import wait_for

from vfile import control

pytestmark = pytest.mark.mount

#: files per pass (in DIRS directories) and passes
FILES = 600
DIRS = 12
PASSES = 4
#: live objects a pass may add over the first pass's (trio's and the pool's bounded
#: bookkeeping moves by some tens between two reports); a leak of one per file: FILES
SLACK = FILES // 3


def one_pass(mnt: Path) -> None:
    """The same tree each time (as `tar x` of one archive): the content-hash cache
    (vfile.filter.contenthash, 4,096 contents at most) holds its contents once."""
    tree = mnt / "x"
    for i in range(FILES):
        d = tree / f"d{i % DIRS:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_bytes(b"file %d\n" % i * (1 + i % 7))


def live(mnt: Path) -> dict[str, Any]:
    """The server's live objects after a full collection, and the gate's figures."""
    mem = control.call(mnt, "memory", {"top": 8, "types": True, "baseline": True},
                       timeout=60)
    status = control.call(mnt, "status", timeout=30)
    return {"objects": mem["gc_objects"], "grown": mem.get("types_growth"),
            "cached": status["gate"]["cached_verdicts"],
            "journal_verdicts": status["journal"]["verdicts"]}


def test_passes_of_a_tree_in_and_out_leave_what_the_first_left(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        after: list[dict[str, Any]] = []
        for _ in range(PASSES):
            one_pass(f.mnt)
            f.wait_idle(60)
            gate = f.gate()
            # The tree is known to the kernel: its verdicts are cached, one per file.
            assert FILES <= gate["cached_verdicts"] <= FILES + 2, gate
            shutil.rmtree(f.mnt / "x")
            # FORGET reaches the server asynchronously: the cache follows it.
            wait_for("the verdict cache to drop the removed tree",
                     lambda: f.gate()["cached_verdicts"] <= 2, 30)
            # The journal drops a file's verdicts with its last name (before m27 they
            # stayed until the hourly collection: 600, 1131, 1702, 2243 after 4 passes).
            wait_for("the journal to drop the removed tree's verdicts",
                     lambda: f.status()["journal"]["verdicts"] <= 2, 30)
            after.append(live(f.mnt))
        first = after[0]["objects"]
        grown = [a["objects"] - first for a in after[1:]]
        assert max(grown) < SLACK, (grown, [a["grown"] for a in after])
        assert all(a["cached"] <= 2 for a in after), after
        assert all(a["journal_verdicts"] <= 2 for a in after), after
        # Scanned, not passed through: every file of every pass had its close scan.
        assert f.gate()["close_scans"] >= PASSES * FILES, f.gate()
