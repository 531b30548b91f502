"""x21's attacks on the lazy write intents (vfile.filter.writeintents): the routes by
which an existing file's content could change, or be served, without its intent
being durable first.

The state directory lives on `tests/cutfs.py`: while `fsync_fault` exists every
fsync fails with EIO, while `fsync_hold` exists every fsync waits. The journal's
background sync is 60 s away (tests/powercut.py `config`), so only the intents' own
fsyncs make them durable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cutfs import fsync_fault, fsync_hold
from mounting import mounted, wait_for
from outage import running_appliance, status, unaccounted
from powercut import config, cut_dirs, learn_signature
from statedisks import cutfs, loop_ext4

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

OLD, NEW = b"A" * 4096, b"B" * 4096
#: what the attacker writes: the built-in appliance knows it as infected
BAD = EICAR + b" " * (4096 - len(EICAR))


def test_bytes_whose_write_failed_for_want_of_a_durable_intent_are_never_served(
        tmp_path: Path) -> None:
    """The writeback cache takes a write; its WRITE fails with EIO (the intent's fsync
    failed), so the source keeps its old bytes, scanned clean. The kernel keeps the
    written pages in its cache (clean: Linux gives up on a failed writeback). A later
    reader through the mount must get the source's bytes (or be refused), never the
    bytes that reached neither the source nor a scan."""
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    (src / "db").write_bytes(OLD)
    state = statefs / "state"
    args = ("--config", str(config(tmp_path)), "--state-dir", str(state))
    with running_appliance() as app, cutfs(disk, statefs), \
            mounted(src, mnt, "--appliance", app.url, *args):
        assert (mnt / "db").read_bytes() == OLD  # scanned clean
        fault = fsync_fault(disk)
        fault.touch()
        try:
            fd = os.open(mnt / "db", os.O_RDWR)
            try:
                os.pwrite(fd, BAD, 0)  # into the kernel's cache
                with pytest.raises(OSError) as err:
                    os.fsync(fd)  # the WRITE: its intent is not durable, EIO
                assert err.value.errno == errno.EIO
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
        finally:
            fault.unlink()
        assert (src / "db").read_bytes() == OLD
        assert status(mnt)["gate"]["intent_fsync_failures"] >= 1
        try:
            seen = (mnt / "db").read_bytes()
        except PermissionError:
            seen = None  # refused: fine too
        assert seen != BAD, "bytes that reached neither the source nor a scan were " \
            "served through the mount (from the kernel's cache)"


#: each route, run in a process of its own (a thread blocked in msync holds the GIL)
ROUTES = {
    "mapped": """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
with mmap.mmap(fd, 4096) as m:
    m[:4] = b"MMAP"
    m.flush()  # msync: the kernel's writeback sends the WRITE
os.close(fd)
""",
    "appended": """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
os.write(fd, b"APPEND")
os.fsync(fd)
os.close(fd)
""",
    "spliced": """
import os, sys
src = os.open(sys.argv[1] + ".in", os.O_RDONLY)
fd = os.open(sys.argv[1], os.O_WRONLY)
assert os.copy_file_range(src, fd, 6) == 6  # the kernel falls back to a splice
os.fsync(fd)
os.close(fd)
""",
}
WANT = {"mapped": b"MMAP" + OLD[4:], "appended": OLD + b"APPEND",
        "spliced": b"SPLICE" + OLD[6:]}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_no_route_changes_the_source_before_the_intent_is_durable(tmp_path: Path,
                                                                  route: str) -> None:
    """While every fsync of the state disk waits, a write-open of an existing file
    returns (its intent is committed), but no way of writing through it may reach
    the source before the intent is durable: a shared writable mmap, O_APPEND,
    copy_file_range (no such FUSE request here: the kernel splices into WRITEs).
    Once the fsync returns, the bytes land."""
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    (src / "f").write_bytes(OLD)
    (src / "f.in").write_bytes(b"SPLICE")
    state = statefs / "state"
    args = ("--config", str(config(tmp_path)), "--state-dir", str(state))
    hold = fsync_hold(disk)
    with running_appliance() as app, cutfs(disk, statefs), \
            mounted(src, mnt, "--appliance", app.url, *args):
        assert (mnt / "f").read_bytes() == OLD
        waited = status(mnt)["gate"]["writes_awaiting_intent_fsync"]
        hold.touch()
        try:
            proc = subprocess.Popen([sys.executable, "-c", ROUTES[route], str(mnt / "f")])
            wait_for("the WRITE waits for its intent's fsync (or went through)", lambda: (
                (src / "f").read_bytes() != OLD or proc.poll() is not None
                or status(mnt)["gate"]["writes_awaiting_intent_fsync"] > waited), 60)
            early = (src / "f").read_bytes()
        finally:
            hold.unlink()
        assert proc.wait(60) == 0
        assert early == OLD, f"{route}: reached the source before its intent was durable"
        assert (src / "f").read_bytes() == WANT[route]


def test_bytes_the_full_source_refused_are_never_served(tmp_path: Path) -> None:
    """The same through the source: its disk is full, so the WRITE of an append fails
    (ENOSPC) while the kernel's cache keeps the appended bytes. A later reader must not
    be served them: they reached neither the source nor a scan."""
    with loop_ext4(tmp_path, 8) as fs:
        src, mnt = fs / "src", tmp_path / "mnt"
        src.mkdir()
        mnt.mkdir()
        (src / "db").write_bytes(OLD)
        filler = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # root's reserved blocks too: the server writes as root
            for chunk in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while os.write(filler, b"\0" * chunk):
                        pass
            os.fsync(filler)
        finally:
            os.close(filler)
        args = ("--config", str(config(tmp_path)), "--state-dir", str(tmp_path / "state"))
        with running_appliance() as app, mounted(src, mnt, "--appliance", app.url, *args):
            assert (mnt / "db").read_bytes() == OLD  # scanned clean
            fd = os.open(mnt / "db", os.O_RDWR)
            try:
                os.pwrite(fd, BAD, len(OLD))  # into the kernel's cache
                with pytest.raises(OSError) as err:
                    os.fsync(fd)  # the WRITE: the source has no room
                assert err.value.errno in (errno.ENOSPC, errno.EIO)
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
            assert (src / "db").read_bytes() == OLD
            try:
                seen = (mnt / "db").read_bytes()
            except PermissionError:
                seen = None
            assert seen is None or EICAR not in seen, "bytes that reached neither the " \
                "source nor a scan were served through the mount (from the kernel's cache)"


def test_a_write_after_a_failed_intent_fsync_survives_a_power_cut(tmp_path: Path) -> None:
    """The first writer's intent cannot be fsynced (its WRITE fails with EIO); the disk
    comes back; a second writer opens the same file while the first still holds it
    and writes: that WRITE waits for a fresh fsync of both intents (after the failed
    one, every page is written again: journal.syncer.EnvFsync). Then the power goes:
    the written file must have its entry (or a verdict)."""
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    (src / "db").write_bytes(OLD)
    state = statefs / "state"
    args = ("--config", str(config(tmp_path)), "--state-dir", str(state))
    with running_appliance() as app:
        args = ("--appliance", app.url, *args)
        with cutfs(disk, statefs):
            sig = learn_signature(src, mnt, state, args, ["db"])
            with mounted(src, mnt, *args) as server:
                fault = fsync_fault(disk)
                fault.touch()
                try:
                    first = os.open(mnt / "db", os.O_RDWR)
                    os.pwrite(first, BAD, 0)
                    with pytest.raises(OSError):
                        os.fsync(first)  # EIO: its intent is not durable
                finally:
                    fault.unlink()
                second = os.open(mnt / "db", os.O_RDWR)
                os.pwrite(second, NEW, 0)
                os.fsync(second)  # lands, once both intents are fsynced afresh
                os.close(second)
                assert (src / "db").read_bytes() == NEW
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait(10)
                with contextlib.suppress(OSError):
                    os.close(first)
        # The cut: everything cutfs was not told to fsync is gone.
        with cutfs(disk, statefs):
            lost = unaccounted(src, state, sig)
    assert lost == [], f"a written file with neither a journal entry nor a verdict: {lost}"
