"""A write-open's intent is committed in the open and fsynced before its first WRITE
(vfile.filter.writeintents): a power cut, or an fsync that fails, must still leave
no changed file without a journal entry.

The state directory lives on `tests/cutfs.py` (bytes not fsynced are lost on a
cut; while its fault file exists every fsync fails with EIO). The journal's
background sync is 60 s away, so only the intents' own fsyncs make them durable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from pathlib import Path

import pytest
from cutfs import fsync_fault, fsync_hold
from mounting import mounted, wait_for
from outage import running_appliance, status, unaccounted
from powercut import config, cut_dirs, learn_signature
from statedisks import cutfs

pytestmark = pytest.mark.mount

FILES = 12
OLD, NEW = b"A" * 4096, b"B" * 4096


def rewrite(path: Path, data: bytes) -> None:
    """What a database does: open O_RDWR (no O_TRUNC), write in place, close."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def test_files_rewritten_before_a_power_cut_keep_their_entries(tmp_path: Path) -> None:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    names = [f"db{i}" for i in range(FILES)]
    for n in names:
        (src / n).write_bytes(OLD)
    state = statefs / "state"
    args = ("--config", str(config(tmp_path)), "--state-dir", str(state))
    with running_appliance() as app:
        args = ("--appliance", app.url, *args)
        with cutfs(disk, statefs):
            sig = learn_signature(src, mnt, state, args, names)
            with mounted(src, mnt, *args) as server:
                for n in names:
                    rewrite(mnt / n, NEW)
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait(10)
        # The cut: everything cutfs was not told to fsync is gone.
        assert all((src / n).read_bytes() == NEW for n in names)
        with cutfs(disk, statefs):
            lost = unaccounted(src, state, sig)
    assert lost == [], f"rewritten files with neither a journal entry nor a verdict: {lost}"


def test_a_power_cut_while_the_intent_is_not_durable_loses_no_write(tmp_path: Path) -> None:
    """The intent's fsync is held; the writer's WRITE (sent at close) waits for it;
    the power is cut then. Its bytes must not be in the source, or its entry must be
    in the journal: never a changed file the journal forgot."""
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    (src / "db").write_bytes(OLD)
    state = statefs / "state"
    args = ("--config", str(config(tmp_path)), "--state-dir", str(state))
    hold = fsync_hold(disk)
    with running_appliance() as app:
        args = ("--appliance", app.url, *args)
        with cutfs(disk, statefs) as cut:
            sig = learn_signature(src, mnt, state, args, ["db"])
            with mounted(src, mnt, *args) as server:
                hold.touch()
                try:
                    def write() -> None:
                        with contextlib.suppress(OSError):  # ENOTCONN once vfile is gone
                            rewrite(mnt / "db", NEW)

                    writer = threading.Thread(target=write, daemon=True)
                    writer.start()
                    wait_for("the WRITE waits for its intent's fsync (or went through)",
                             lambda: (src / "db").read_bytes() != OLD or status(mnt)["gate"]
                             .get("writes_awaiting_intent_fsync", 0) >= 1, 30)
                    # The power goes: vfile and the state disk at once (a process in
                    # an fsync of a FUSE file system dies only once that one is gone).
                    server.proc.send_signal(signal.SIGKILL)
                    cut.kill()
                    server.proc.wait(10)
                finally:
                    hold.unlink()
                writer.join(30)
        with cutfs(disk, statefs):
            lost = unaccounted(src, state, sig)
    assert lost == [], f"a write reached the source, its intent was lost: {lost}"


def test_a_write_whose_intent_cannot_be_fsynced_fails_with_eio(tmp_path: Path) -> None:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    (src / "db").write_bytes(OLD)
    state = statefs / "state"
    args = ("--config", str(config(tmp_path)), "--state-dir", str(state))
    with running_appliance() as app, cutfs(disk, statefs), \
            mounted(src, mnt, "--appliance", app.url, *args):
        assert (mnt / "db").read_bytes() == OLD
        fault = fsync_fault(disk)
        fault.touch()
        try:
            fd = os.open(mnt / "db", os.O_RDWR)  # committed: the open succeeds
            try:
                os.pwrite(fd, NEW, 0)  # the writeback cache takes it
                with pytest.raises(OSError) as err:
                    os.fsync(fd)  # the WRITE reaches vfile: its intent is not durable
                assert err.value.errno == errno.EIO
            finally:
                with contextlib.suppress(OSError):  # the same error again, from the flush
                    os.close(fd)
            assert (src / "db").read_bytes() == OLD, "a write went through whose " \
                "intent the journal could not make durable"
        finally:
            fault.unlink()
        gate = status(mnt)["gate"]
        assert gate["intent_fsync_failures"] >= 1, gate
        # The disk is back: the next writer's intent is fsynced and its write lands.
        rewrite(mnt / "db", NEW)
        wait_for("the rewrite to reach the source", lambda: (src / "db").read_bytes() == NEW)
