"""Creates no longer wait for their intent's commit (journal.inflight,
vfile.filter.newfiles): the record is queued, the witness on the tmpfs says
`pending` until it is committed, and the watermark stays below it.

Here the state directory lives on a loop-mounted ext4 that is frozen while files
are created through the mount: the creates go on (their intents wait in the
queue), then the server gets SIGKILL with every intent still queued. The journal
then lacks them (shown), and the next start must see from the witness that
intents were in flight, walk the source and journal every file before it serves.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from lifecycle import Tree
from mounting import force_unmount
from outage import restarted_with_walk, signature_version, unaccounted
from queuedrace import server_on_loop_disk
from statedisks import frozen

pytestmark = pytest.mark.mount

FILES = 20


def _create_all(mnt: Path, deadline: float) -> list[str]:
    """Create FILES files in a thread; those not created within `deadline`."""
    done: list[str] = []

    def run() -> None:
        for i in range(FILES):
            (mnt / f"new{i}").write_bytes(b"created %d" % i)
            done.append(f"new{i}")

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(deadline)
    return [f"new{i}" for i in range(FILES) if f"new{i}" not in done]


def test_sigkill_with_intents_in_flight_walks_before_serving(tree: Tree) -> None:
    with server_on_loop_disk(tree, lambda mnt: None) as (state, args, server):
        with frozen(state.parent):
            stalled = _create_all(tree.mountpoint, 30.0)
            server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)  # a thread of it waiting on the frozen disk dies at the thaw
        force_unmount(tree.mountpoint)
        assert stalled == [], "creates waited on the frozen state disk"
        sig = signature_version(state)
        lost = unaccounted(tree.source, state, sig)
        assert len(lost) >= FILES - 1, f"the intents were not in flight: {lost}"
        text = restarted_with_walk(tree.source, tree.mountpoint, state, sig, *args)
        assert "page cache survived" not in text
