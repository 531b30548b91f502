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
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, signature_version, unaccounted
from statedisks import frozen, loop_ext4, status_json

from vfile.journal import Journal

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


def _settled(mnt: Path) -> bool:
    st = status_json(mnt)
    journal, gate = st["journal"], st["gate"]
    assert isinstance(journal, dict) and isinstance(gate, dict)
    return journal["durability"]["in_flight"] == 0 and gate["pending_intents"] == 0


def test_sigkill_with_intents_in_flight_walks_before_serving(tree: Tree) -> None:
    with running_appliance() as app, loop_ext4(tree.root) as fs:
        state = fs / "state"
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        conf.write_text(conf.read_text().replace(str(tree.state), str(state)))
        args = ("--config", str(conf), "-v")
        with mounted(tree.source, tree.mountpoint, *args) as server:
            (tree.mountpoint / "warm").write_bytes(b"warm-up")
            wait_until(lambda: (tree.mountpoint / "warm").read_bytes()
                       and signature_version(state), "the signature version")
            wait_until(lambda: _settled(tree.mountpoint), "the warm-up settled")
            with frozen(fs):
                stalled = _create_all(tree.mountpoint, 30.0)
                server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)
        assert stalled == [], "creates waited on the frozen state disk"
        sig = signature_version(state)
        lost = unaccounted(tree.source, state, sig)
        assert len(lost) >= FILES - 1, f"the intents were not in flight: {lost}"
        with mounted(tree.source, tree.mountpoint, *args) as again:
            text = again.log()  # the walk runs before the mount serves
        assert "recovery walk" in text
        assert "page cache survived" not in text
        assert unaccounted(tree.source, state, sig) == []
        with Journal.open(state, readonly=True) as j:
            assert j.check() == []
