"""rsync into a scanning mount without waiting for close scans (rs24,
vfile.filter.keeping): rsync's utimensat and rename of each temporary file come
within a timestamp tick of its close, before the close scan (which waits for that
tick) has read the file. That scan stats and reads the file after them, so it
judges the file as changed and renamed: neither waits for it (before: each
utimensat waited ~5 ms for the verdict and each rename ~3 ms for its commit, and
a rename whose wait ran out journaled a durable intent).

Through real mounts on the embedded default appliance (the close scan judges small
files at once):
- after rsync of FILES files the metadata changes and renames that waited for a
  close scan are a few at most (`vfile status --json`: gate.keeping_waits), and
  nothing is unaccounted;
- the same steps by hand while the state disk is frozen (nothing can commit, so a
  wait for a commit or a durable intent would stall): none stalls; a SIGKILL right
  after, and the next start walks and leaves nothing unaccounted;
- a power cut right after them (cutfs, the background sync far away): the next
  start walks and leaves nothing unaccounted;
- the close scan that follows a renamed file still judges what it holds: infected
  content renamed before it was read, a file rewritten through its new name before
  it was read (both denied), a file renamed twice and chmodded (its clean verdict).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from lifecycle import Tree, wait_until
from mounting import force_unmount, mounted
from outage import (
    restarted_with_walk,
    signature_version,
    status,
    unaccounted,
    verdict_outcome,
)
from queuedrace import DEADLINE, wait_settled
from serverpatches import patched
from statedisks import cutfs, frozen, loop_ext4
from unread import HOLD_UNREAD, HOLD_UNREAD_LINE, read_errno, safe_config, warm

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

FILES = 200
#: files the crash tests write with rsync's steps
STEPS = 40


def _waits(mnt: Path) -> int:
    waits = status(mnt)["gate"]["keeping_waits"]
    return int(waits["metadata"]) + int(waits["rename"])


def _rsync_steps(mnt: Path, names: list[str], done: list[str], data: bytes = b"") -> None:
    """rsync's steps per file: mkstemp `.name.XXXXXX` (O_CREAT|O_EXCL), write (`data`,
    else 2 KiB of random bytes), close, utimensat and chmod of the temporary name,
    rename onto the final name."""
    for n in names:
        tmp = mnt / f".{n}.Ab12Cd"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data or os.urandom(2048))
        finally:
            os.close(fd)
        os.utime(tmp, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        os.chmod(tmp, 0o644)
        os.rename(tmp, mnt / n)
        done.append(n)


def test_rsync_waits_for_no_close_scan(tree: Tree) -> None:
    src = tree.root / "tree"
    for i in range(FILES):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(2048))
    mnt = tree.mountpoint
    with mounted(tree.source, mnt, "--config", str(safe_config(tree.root, tree.state))):
        warm(mnt, tree.state, settle=False)
        wait_settled(mnt)
        before = _waits(mnt)
        subprocess.run(["rsync", "-a", f"{src}/", f"{mnt}/copy/"], check=True,
                       timeout=DEADLINE)
        wait_settled(mnt)
        wait_until(lambda: status(mnt)["journal"]["deferred"] == 0,
                   "the journal emptied", DEADLINE)
        waited = _waits(mnt) - before
        gate = status(mnt)["gate"]
        assert unaccounted(tree.source, tree.state, signature_version(tree.state)) == []
    # Before: every utimensat and every rename waited (2 a file). A few may still: a
    # file whose close scan read it first (rsync descheduled for a tick on a busy host).
    assert waited <= FILES // 10, (waited, gate)


def test_sigkill_right_after_unwaited_changes(tree: Tree) -> None:
    with loop_ext4(tree.root) as fs:
        state = fs / "state"
        args = ("--config", str(safe_config(tree.root, state)), "-v")
        with mounted(tree.source, tree.mountpoint, *args) as server:
            warm(tree.mountpoint, state, settle=False)
            wait_settled(tree.mountpoint)
            sig = signature_version(state)
            names = [f"f{i}" for i in range(STEPS)]
            done: list[str] = []
            with frozen(fs):
                th = threading.Thread(target=_rsync_steps, args=(tree.mountpoint, names, done),
                                      daemon=True)
                th.start()
                th.join(30)
                server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)
            force_unmount(tree.mountpoint)
        assert done == names, f"rsync's steps stalled on the frozen state disk: {len(done)}"
        lost = unaccounted(tree.source, state, sig)
        assert lost, "nothing was in flight at the kill (nothing to show)"
        restarted_with_walk(tree.source, tree.mountpoint, state, sig, *args)


def test_power_cut_right_after_unwaited_changes(tmp_path: Path) -> None:
    src, mnt, disk, statefs = (tmp_path / n for n in ("src", "mnt", "disk", "statefs"))
    for p in (src, mnt, disk, statefs):
        p.mkdir()
    state = statefs / "state"
    args = ("--config", str(safe_config(tmp_path, state, '[journal]\nsync_interval = "60s"\n')))
    with cutfs(disk, statefs):
        with mounted(src, mnt, *args):
            warm(mnt, state, settle=False)  # the signature version, persisted at a clean stop
        sig = signature_version(state)
        with mounted(src, mnt, *args) as server:
            done: list[str] = []
            _rsync_steps(mnt, [f"f{i}" for i in range(STEPS)], done)
            waited = _waits(mnt)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(30)
            force_unmount(mnt)
    assert waited <= STEPS // 4, f"the changes waited for close scans: {waited}"
    with cutfs(disk, statefs):  # the cut: only what was fsynced came back
        lost = unaccounted(src, state, sig)
        assert lost, "the cut lost nothing (nothing to show)"
        restarted_with_walk(src, mnt, state, sig, *args, "-v")


def test_the_close_scan_that_follows_a_rename_judges_what_it_holds(tree: Tree) -> None:
    conf = safe_config(tree.root, tree.state, 'infected_action = "deny"\n')
    mnt = tree.mountpoint
    # The close scans stay unread across the temporaries' changes and renames (under
    # load one read r1 first, now and then, and it kept its entry, not a verdict).
    held = ",".join(f".{n}.Ab12Cd" for n in ("r1", "r2", ".r3.b"))
    env = {**patched(tree.root, HOLD_UNREAD), "VFILE_TEST_HOLD_UNREAD": held}
    with mounted(tree.source, mnt, "--config", str(conf), env=env) as server:
        warm(mnt, tree.state, settle=False)
        wait_settled(mnt)
        before = _waits(mnt)
        _rsync_steps(mnt, ["r1"], [], EICAR)  # infected, renamed before it was read
        _rsync_steps(mnt, ["r2"], [], b"clean so far\n")
        with open(mnt / "r2", "r+b") as f:  # rewritten through its new name at once
            f.write(EICAR)  # (the engine knows EICAR at the start of a file only)
        _rsync_steps(mnt, [".r3.b"], [], b"renamed twice\n")
        os.rename(mnt / ".r3.b", mnt / "r3")
        os.chmod(mnt / "r3", 0o600)
        waited = _waits(mnt) - before
        assert HOLD_UNREAD_LINE in server.log(), "the close scans were not held unread"
        wait_settled(mnt)
        assert read_errno(mnt / "r1") == errno.EACCES
        assert read_errno(mnt / "r2") == errno.EACCES
        assert (mnt / "r3").read_bytes() == b"renamed twice\n"
        wait_settled(mnt)
        sig = signature_version(tree.state)
    assert waited <= 2, f"not the unwaited route: {waited} waited"
    assert [verdict_outcome(tree.state, tree.source, n, sig) for n in ("r1", "r2", "r3")] \
        == ["infected", "infected", "clean"]
    assert unaccounted(tree.source, tree.state, sig) == ["r1", "r2"]  # infected: no clean
