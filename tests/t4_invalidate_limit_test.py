"""Kernel-entry invalidations the kernel does not answer (r22's leftover): each infected
action asks the kernel to drop the file's entry (`forget_name`, in a thread) and goes on
after FORGET_NAME_TIMEOUT; the abandoned thread keeps its limiter slot until the kernel
lets it go. In trio's default limiter (40), enough of them stalled every other thread
call of the server: here `vfile status` (the journal's counts are read in a thread)
never answered. They now have a limiter of their own (passthrough.opsbase
INVALIDATE_THREADS): the rest of the server goes on, and the invalidations that find it
full are counted as not dropped.

The kernel's stall (the entry's directory lock held by a request waiting in the server)
is made certain by patching the server: `pyfuse3.invalidate_entry` blocks until the test
lets it go."""

from __future__ import annotations

import pytest
from lifecycle import Tree, wait_until
from mounting import mounted
from serverpatches import patched
from statedisks import status_json

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

#: more than trio's default thread limiter holds (40)
FILES = 48

PATCH = """
    import os, time
    import pyfuse3
    from vfile.filter import actions

    actions.FORGET_NAME_TIMEOUT = 0.05  # the test need not wait 5 s per file
    RELEASE = {release!r}

    def invalidate_entry(*args, **kwargs):  # the kernel never lets it go (until the end)
        end = time.monotonic() + 120
        while not os.path.exists(RELEASE) and time.monotonic() < end:
            time.sleep(0.05)

    pyfuse3.invalidate_entry = invalidate_entry
"""


def _not_dropped(tree: Tree) -> object:
    gate = status_json(tree.mountpoint, timeout=30)["gate"]
    assert isinstance(gate, dict)
    return gate["kernel_entries_not_dropped"]


def test_stalled_invalidations_do_not_stall_the_other_thread_calls(tree: Tree) -> None:
    release = tree.root / "release"
    conf = tree.root / "vfile.toml"
    conf.write_text(f'[mount]\nstate_dir = "{tree.state}"\n'
                    f'quarantine_dir = "{tree.root / "quarantine"}"\n'
                    '[[profile]]\nname = "default"\ninfected_action = "delete"\n')
    env = patched(tree.root, PATCH.format(release=str(release)))
    with mounted(tree.source, tree.mountpoint, "--config", str(conf), env=env):
        try:
            for i in range(FILES):  # each close scan finds it infected and deletes it
                (tree.mountpoint / f"bad{i}.com").write_bytes(EICAR)
            wait_until(lambda: not any(tree.source.iterdir()), "every file deleted", 60)
            # `vfile status` hung before (every slot of the default limiter held): it
            # fails on its own timeout (30 s) then.
            wait_until(lambda: _not_dropped(tree) == FILES,
                       "every invalidation given up", 60)
        finally:
            release.touch()
