"""A close scan whose clean verdict cannot be queued for the journal with an error other
than OSError or JournalError (here RuntimeError, as `threading` raises when no thread
can be started for the journal's writer) leaves the file to the drain with one log
line. Before, the error escaped `CloseScans.run`: the task died with a traceback
(left to the drain only by luck of its `finally`; `mounted` fails on a traceback)."""

from __future__ import annotations

import pytest
from lifecycle import Tree, wait_until
from mounting import mounted
from outage import signature_version, status, unaccounted
from queuedrace import settled
from serverpatches import patched

pytestmark = pytest.mark.mount

#: the first clean verdict of each file named boom* cannot be queued
PATCH = """
    from vfile.filter import settling

    real = settling.Settler.resolve_soon
    failed = set()

    def resolve_soon(self, path, *args, **kwargs):
        if path.startswith("boom") and path not in failed:
            failed.add(path)
            raise RuntimeError("can't start new thread")
        return real(self, path, *args, **kwargs)

    settling.Settler.resolve_soon = resolve_soon
"""

#: above filter.contenthash.HASH_MAX: judged by its own task (`run`), not the batch
BIG = 100 << 10


def test_a_close_scan_that_cannot_queue_its_verdict_leaves_the_file_to_the_drain(
        tree: Tree) -> None:
    conf = tree.root / "vfile.toml"
    conf.write_text(f'[mount]\nstate_dir = "{tree.state}"\n'
                    f'quarantine_dir = "{tree.root / "quarantine"}"\n')
    with mounted(tree.source, tree.mountpoint, "--config", str(conf), "-v",
                 env=patched(tree.root, PATCH)) as server:
        mnt = tree.mountpoint
        (mnt / "warm").write_bytes(b"warm-up")
        wait_until(lambda: signature_version(tree.state), "the signature version")
        (mnt / "boom").write_bytes(b"x" * BIG)
        (mnt / "after").write_bytes(b"y" * BIG)  # the close scans go on
        wait_until(lambda: settled(mnt) and status(mnt)["journal"]["deferred"] == 0,
                   "the drain scanned it", 60)
        text = server.log()
        lines = [ln for ln in text.splitlines() if "close scan of 'boom'" in ln]
        assert len(lines) == 1 and "left to the drain" in lines[0], text[-3000:]
        assert unaccounted(tree.source, tree.state, signature_version(tree.state)) == []
