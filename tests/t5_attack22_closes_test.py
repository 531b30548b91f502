"""Attack review x22: close scans (vfile/filter/closing.py) queued by the thousand.

A close scan owns a descriptor of its file from the last close until it is judged. On
the embedded engine the batch judges small files at once; with any other appliance each
close scan is a task that waits for one of `CLOSE_SCANS` slots, holding its descriptor.
A slow appliance (answering, so no breaker opens) and one local user creating files
faster than it scans them: descriptors pile up, and another user's read of a file with
a clean verdict must still work (it needs one descriptor of its own).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from lifecycle import Tree, tree_config
from mounting import mounted, server_pids
from outage import running_appliance, running_proxy, signature_version, unaccounted

pytestmark = pytest.mark.mount

NOFILE = 1024
BURST = 1500


def _fds(mnt: Path) -> int:
    (pid,) = server_pids(mnt)
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_burst_of_creates_on_a_slow_appliance_leaves_reads_working(tree: Tree) -> None:
    old = tree.source / "old"
    old.write_bytes(b"a clean file, read during the burst")
    with running_appliance() as app, running_proxy(app.url, fault="delay=300ms") as proxy:
        conf = tree_config(tree, proxy, '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                           'deadline = 20\nattempt_timeout = 10\n')
        with mounted(tree.source, tree.mountpoint, "--config", str(conf), nofile=NOFILE,
                     tracebacks_expected=True):
            assert (tree.mountpoint / "old").read_bytes() == old.read_bytes()  # cached
            failed: list[OSError] = []
            peak = [0]

            def burst() -> None:
                for i in range(BURST):
                    try:
                        (tree.mountpoint / f"burst{i}").write_bytes(b"x%d" % i)
                    except OSError as err:
                        failed.append(err)
                    if i % 100 == 0:
                        peak[0] = max(peak[0], _fds(tree.mountpoint))

            th = threading.Thread(target=burst, daemon=True)
            th.start()
            th.join(300)
            peak[0] = max(peak[0], _fds(tree.mountpoint))
            try:
                data = (tree.mountpoint / "old").read_bytes()
            except OSError as err:
                data = f"{err}".encode()
            print(f"server descriptors at most {peak[0]}; {len(failed)} creates failed")
            assert not failed, f"{len(failed)} creates failed, e.g. {failed[:1]}"
            assert data == old.read_bytes(), f"a clean file unreadable: {data!r}"
        # Every file left to the drain kept its entry; the others have their verdict.
        assert unaccounted(tree.source, tree.state, signature_version(tree.state)) == []
