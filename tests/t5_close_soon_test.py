"""A close scan's clean verdict no longer waits for the journal (vfile.filter.closing,
`_settle_soon`): its completion is queued behind the create's intent (in the same
transaction while that intent still lingers in the queue) and the close scan ends,
closing its descriptor. Through a real mount whose state disk is frozen during a
burst of creates: every close scan ends during the freeze, none is left to the
drain, and after the thaw every file has its clean verdict and no entry; a SIGKILL
with completions still queued leaves no file unaccounted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from lifecycle import Tree, wait_until
from mounting import mounted
from outage import signature_version, unaccounted
from statedisks import frozen, loop_ext4, status_json

from vfile.journal import Journal
from vfile.journal.records import Identity

pytestmark = pytest.mark.mount

#: above filter.closing.MAX_WAITING (256): before, the close scans beyond it were left
#: to the drain while the state disk was frozen
BURST = 300


def _embedded(tree: Tree, fs: Path) -> tuple[Path, Path]:
    """The state directory on `fs` and a config on the embedded built-in appliance (in
    the server: no socket, no probe to time out while the machine is busy)."""
    conf = tree.root / "vfile.toml"
    conf.write_text(f'[mount]\nstate_dir = "{fs / "state"}"\n'
                    f'quarantine_dir = "{tree.root / "quarantine"}"\n')
    return fs / "state", conf


def _gate(mnt: Path) -> dict[str, int]:
    gate = status_json(mnt)["gate"]
    assert isinstance(gate, dict)
    return gate


def _wait_close_scans(mnt: Path, n: int, log: Callable[[], str]) -> None:
    """Until the gate counted `n` close scans (each one ran during the freeze)."""
    end = time.monotonic() + 60
    while (gate := _gate(mnt))["close_scans"] < n:
        assert time.monotonic() < end, f"close scans did not end during the freeze: " \
            f"{gate} {log()[-3000:]}"
        time.sleep(0.1)


def _burst(mnt: Path, prefix: str) -> list[OSError]:
    failed: list[OSError] = []

    def run() -> None:
        for i in range(BURST):
            try:
                (mnt / f"{prefix}{i}").write_bytes(b"file %d of a burst\n" % i)
            except OSError as err:
                failed.append(err)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(120)
    assert not th.is_alive(), "creates stalled on the frozen state disk"
    return failed


def test_close_scans_end_on_a_frozen_state_disk_and_resolve_after_the_thaw(
        tree: Tree) -> None:
    with loop_ext4(tree.root) as fs:
        state, conf = _embedded(tree, fs)
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)) as server:
            before = _gate(tree.mountpoint)["close_scans"]
            with frozen(fs):
                failed = _burst(tree.mountpoint, "burst")
                assert not failed, failed[:3]
                # Every close scan ends while the disk is still frozen: none waits for
                # its intent's commit holding a descriptor (at most MAX_WAITING did).
                _wait_close_scans(tree.mountpoint, before + BURST, server.log)
            wait_until(lambda: _gate(tree.mountpoint)["pending_intents"] == 0
                       and status_json(tree.mountpoint)["journal"]["durability"]["in_flight"]
                       == 0, "the queued intents and completions committed after the thaw", 60)
            assert "left to the drain" not in server.log(), server.log()[-2000:]
        with Journal.open(state, readonly=True) as j:
            entries = {e.path for e in j.list_deferred()}
            sig = next(iter(j.verdicts())).sig_version
            missing = [f"burst{i}" for i in range(BURST) if (
                (v := j.get_verdict(Identity.from_stat(
                    os.stat(tree.source / f"burst{i}")), sig)) is None or v.outcome != "clean")]
    assert not {f"burst{i}" for i in range(BURST)} & entries, sorted(entries)[:5]
    assert not missing, missing[:5]


def test_a_sigkill_with_completions_queued_leaves_no_file_unaccounted(tree: Tree) -> None:
    """Frozen state disk, a burst of creates, their close scans done and completions
    queued in memory: SIGKILL, thaw, start again. The witness said `pending`, so the
    start walks: every file has an entry or a clean verdict."""
    with loop_ext4(tree.root) as fs:
        state, conf = _embedded(tree, fs)
        with mounted(tree.source, tree.mountpoint, "--config", str(conf),
                     tracebacks_expected=True) as server:
            before = _gate(tree.mountpoint)["close_scans"]
            with frozen(fs):
                assert not _burst(tree.mountpoint, "k")
                _wait_close_scans(tree.mountpoint, before + BURST, server.log)
                server.proc.send_signal(signal.SIGKILL)  # dies once the disk thaws
            server.proc.wait(60)
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)) as again:
            text = again.log()  # the decision (walk) is logged before the mount serves
        with Journal.open(state, readonly=True) as j:  # the drain may have resolved some
            sig = next((v.sig_version for v in j.verdicts()), "") or signature_version(state)
        assert unaccounted(tree.source, state, sig) == [], \
            f"files with neither entry nor verdict: {text[-3000:]}"
