"""An infected file the drain moves away is gone from the mount at once.

The drain quarantines, renames or deletes an infected file in the source,
behind the kernel's back. The kernel keeps its entry for that name for the
entry timeout (1 s), and until it expires an access by the old name reaches the
moved file (an open is denied by its infected verdict, a stat succeeds). The
drain tells the kernel to drop the entry before it counts the file done, so a
name the status calls resolved is gone through the mount too.

A thread stats every name until the drain is done, so each name's entry was
looked up less than a second before the drain moved its file: without the
invalidation, most of the eight names still stat after the drain (seen
failing).
"""

from __future__ import annotations

import errno
import os
import threading

import pytest
from lifecycle import Tree, drained, tree_config, wait_until
from mounting import mounted
from outage import running_appliance

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

NAMES = [f"sub/bad{i}.com" for i in range(8)]


def _stat_errno(path: os.PathLike[str]) -> int:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno or -1
    return 0


@pytest.mark.parametrize("action", ["quarantine", "rename", "delete"])
def test_a_name_the_drain_moved_away_is_gone_from_the_mount(tree: Tree, action: str) -> None:
    (tree.source / "sub").mkdir()
    with running_appliance(fault="refuse") as app:
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                                      f'infected_action = "{action}"\n')
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)):
            for name in NAMES:  # written during the outage: deferred, served (fail-safe)
                (tree.mountpoint / name).write_bytes(EICAR)
            stop = threading.Event()

            def refresh() -> None:  # an expired entry is looked up again: fresh for 1 s
                while not stop.is_set():
                    for name in NAMES:
                        _stat_errno(tree.mountpoint / name)
                    stop.wait(0.02)

            refresher = threading.Thread(target=refresh)
            refresher.start()
            try:
                app.set_fault("none")
                # Every file moved away in the source, then nothing in flight: each action
                # (and its kernel invalidation) is done. `drained` alone can be read while
                # a file is journaled again for its next scan (the kernel's SETATTR of the
                # times it kept after the writes, vfile.filter.keeping), its action to come.
                wait_until(lambda: not any((tree.source / n).exists() for n in NAMES)
                           and drained(tree.mountpoint), "the journal drained")
            finally:
                stop.set()
                refresher.join()
            still = [n for n in NAMES if _stat_errno(tree.mountpoint / n) != errno.ENOENT]
            assert still == [], f"names the drain moved away still resolve: {still}"
            assert not any((tree.source / n).exists() for n in NAMES)
