"""tests/syscall_client.py through a scanning mount, against a native directory.

The program uses O_NOFOLLOW, O_NOATIME, O_DIRECT, O_APPEND and O_TMPFILE,
flock and POSIX (and open-file-description) locks against a second process,
shared writable mmap, posix_fallocate and copy_file_range. Every check must
see through the mount what it sees natively, except O_TMPFILE: pyfuse3 has no
tmpfile operation, so the kernel answers EOPNOTSUPP, a clear error programs
handle by falling back to a named temporary file (README, Limitations).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import Scanning, run, scanning_mount

pytestmark = pytest.mark.mount

PROGRAM = Path(__file__).with_name("syscall_client.py")


@pytest.fixture(scope="module")
def scanning() -> Iterator[Scanning]:
    with scanning_mount() as s:
        yield s


def program(place: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run([sys.executable, PROGRAM, place]).stdout)
    return result


def test_file_api_client_sees_what_it_sees_natively(scanning: Scanning) -> None:
    pair = scanning.pair()
    native, mounted = (program(place) for place in pair.both())
    assert native["tmpfile"] == "anonymous"
    assert mounted.pop("tmpfile") == "ENOTSUP"  # = EOPNOTSUPP on Linux
    del native["tmpfile"]
    assert mounted == native
    # ... and what it saw natively is what the calls promise
    assert native["nofollow"] == ["regular", "ELOOP"]
    assert native["noatime"] == [5000, 1_000_000_000]
    assert native["direct"][:3] == [16 * 4096, 16 * 4096, True]
    appended = "start|a0|b0|a1|b1|a2|b2|a3|b3|a4|b4|pw|end"
    assert native["append"] == [appended, len(appended)]
    assert native["flock"] == ["ok", "EAGAIN", "EAGAIN", "ok"]
    assert native["posix_locks"][:4] == ["EAGAIN", "EAGAIN", "ok", "ok"]
    assert native["posix_locks"][4:] == ["EAGAIN"]  # the open-file-description lock
    assert native["mmap_write"][:2] == ["<mmap>", "!"]
    assert native["fallocate"] == [(1 << 20) + 90, "keep", True]
    assert native["copy_file_range"] == [300_000, 401_000, True, True]
    # the bytes reached the source behind the mount
    assert (pair.src / "mapped").read_bytes() == (pair.native / "mapped").read_bytes()
    assert (pair.src / "cfr-dst").read_bytes() == (pair.native / "cfr-dst").read_bytes()


def test_scans_leave_atime_alone(scanning: Scanning) -> None:
    """Opening a file without reading it leaves its atime natively; through the
    mount the open-time scan and the close scan read it, and must not change it
    either (they read with O_NOATIME). Before the fix the atime was the scan's."""
    pair = scanning.pair()
    old = (1_000_000_000, 2_000_000_000)  # atime older than mtime: relatime would update it

    def open_only(root: Path) -> int:
        f = root / "quiet"
        os.utime(f, ns=old)
        os.close(os.open(f, os.O_RDONLY))  # scanned on open: no verdict for it yet
        fd = os.open(f, os.O_RDWR)  # a writer's last close schedules a scan
        os.close(fd)
        scanning.wait_idle()
        return os.stat(f).st_atime_ns

    (pair.native / "quiet").write_bytes(b"q" * 10_000)
    (pair.src / "quiet").write_bytes(b"q" * 10_000)  # behind the mount: never scanned
    native, mounted = (open_only(place) for place in pair.both())
    assert native == old[0]
    assert mounted == native
    assert os.stat(pair.src / "quiet").st_atime_ns == old[0]
