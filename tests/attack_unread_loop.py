"""Attack (r25, run by name, not in the default suite): a file touched in a loop before
its close scan read it must not hold back other files' close scans.

Each metadata change moves an unread close scan's due time a tick on (rs24,
`CloseScans.unread`), uncapped. The test needs a touch to land before the scan read
the file; on a quiet machine it does within a few tries, but in a clean-clone CI run
under the full suite's load none of 20 tries did ("no close scan held back"), so the
run showed nothing. Run it with `.venv/bin/pytest tests/attack_unread_loop.py`.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from lifecycle import Tree
from mounting import mounted, wait_for
from outage import signature_version, status
from queuedrace import wait_settled

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount


def _config(root: Path, state: Path) -> Path:
    conf = root / "vfile.toml"
    conf.write_text(f'[mount]\nstate_dir = "{state}"\n'
                    f'quarantine_dir = "{root / "quarantine"}"\n'
                    '[[profile]]\nname = "default"\nfail_mode = "safe"\ndeadline = 2.0\n'
                    'infected_action = "deny"\n')
    return conf


def _read_errno(path: Path) -> int:
    try:
        path.read_bytes()
    except OSError as err:
        return err.errno or -1
    return 0


def _new(path: Path, data: bytes = EICAR) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _warm(mnt: Path, state: Path) -> None:
    (mnt / "warm").write_bytes(b"warm-up")
    wait_for("the signature version", lambda: (
        (mnt / "warm").read_bytes(), signature_version(state))[-1], 30)
    wait_settled(mnt)


def wait_until_or_none(cond: Callable[[], bool], timeout: float) -> bool:
    """Whether `cond` became true within `timeout` seconds (a generous bound)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_a_file_touched_in_a_loop_holds_back_no_other_close_scan(tree: Tree) -> None:
    """Each metadata change moves its unread close scan's due time a tick on; the
    batch takes closes in order: the other files' close scans must not wait behind a
    file touched for as long as a caller likes."""
    mnt = tree.mountpoint
    with mounted(tree.source, mnt, "--config", str(_config(tree.root, tree.state))):
        _warm(mnt, tree.state)
        stop = threading.Event()

        def touch(name: str) -> None:
            _new(mnt / name, b"touched\n")  # touched from its close on, before its tick
            i = 0
            while not stop.is_set():
                os.utime(mnt / name, ns=(i, i))
                i += 1

        threads = []
        held = False
        try:
            for k in range(20):  # until one is touched before its close scan read it
                th = threading.Thread(target=touch, args=(f"m{k}",), daemon=True)
                th.start()
                threads.append(th)
                time.sleep(0.3)
                if held := bool(status(mnt)["gate"]["pending_intents"]):
                    break
            assert held, "no close scan held back"
            before = status(mnt)["gate"]["close_scans"]
            _new(mnt / "o")  # infected: its close scan denies it
            judged = wait_until_or_none(
                lambda: status(mnt)["gate"]["close_scans"] > before, 10)
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        wait_settled(mnt)
        assert _read_errno(mnt / "o") == errno.EACCES
        wait_settled(mnt)
    assert judged, "the close scan of 'o' waited behind the file touched in a loop"
