"""A writer's intent must end with its last close, whatever names its file has then.

Found by tests/stress_queued_race.py (an intent left pending forever, its
entry answered "still being written" by the drain until poisoned): a file held open
for write gets two more names (links), its first name is unlinked (its intent moves
to a surviving name), then another link is made; the last close looks for the
intent under the file's newest name and finds none.
"""

from __future__ import annotations

import os

import pytest
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, signature_version, status, unaccounted
from queuedrace import DEADLINE, settled

pytestmark = pytest.mark.mount


def test_last_close_ends_the_intent_after_links_and_an_unlink(tree: Tree) -> None:
    mnt = tree.mountpoint
    with running_appliance() as app:
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(tree.source, mnt, "--config", str(conf)):
            fd = os.open(mnt / "a", os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                os.write(fd, b"first bytes\n")
                os.link(mnt / "a", mnt / "l1")
                os.link(mnt / "a", mnt / "l2")
                os.unlink(mnt / "a")
                os.link(mnt / "l1", mnt / "l3")
                os.write(fd, b"more bytes\n")
            finally:
                os.close(fd)
            try:
                wait_until(lambda: settled(mnt), "the intent ended", DEADLINE)
            except AssertionError:
                raise AssertionError(f"still pending: {status(mnt)['gate']}") from None
            wait_until(lambda: signature_version(tree.state), "the signature version")
            sig = signature_version(tree.state)
        assert unaccounted(tree.source, tree.state, sig) == []
