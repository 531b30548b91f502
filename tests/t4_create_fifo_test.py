"""A FIFO that appears in the source behind the mount's back never hangs the mount.

The kernel caches a negative entry for ENTRY_TIMEOUT; a FIFO made directly in
the source meanwhile (another mount of it, a host process) turns the next
open(O_CREAT|O_WRONLY) through the mount into CREATE, whose O_EXCL create
finds the FIFO and falls back to a plain open. Without the writeback cache
that open is O_WRONLY, and a FIFO with no reader blocks it: on the one trio
thread, which then serves nothing else (every other request and the unmount
wait on it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mounting import mounted

pytestmark = pytest.mark.mount

#: generous: "does not hang" on a loaded machine
HANG = 20.0

OPEN_CREAT = ("import os, sys\n"
              "try:\n"
              "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
              "except OSError as err:\n"
              "    print('ERR', err.errno)\n"
              "else:\n"
              "    os.close(fd); print('OPENED')\n")


@pytest.mark.parametrize("mode", ["no_writeback", "writeback"])
def test_creat_onto_a_fifo_planted_in_the_source_does_not_hang(tmp_path: Path,
                                                               mode: str) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "other").write_bytes(b"still served")
    extra = ("-o", "no_writeback") if mode == "no_writeback" else ()
    with mounted(src, mnt, "--no-scan", *extra):
        assert not (mnt / "x").exists()  # the kernel now holds a negative entry for x
        os.mkfifo(src / "x")
        proc = subprocess.Popen([sys.executable, "-c", OPEN_CREAT, str(mnt / "x")],
                                stdout=subprocess.PIPE, text=True)
        try:
            out, _ = proc.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            # let the daemon go: a reader for the FIFO
            fd = os.open(src / "x", os.O_RDONLY | os.O_NONBLOCK)
            proc.kill()
            proc.wait()
            os.close(fd)
            pytest.fail("open(O_CREAT) onto a FIFO planted in the source hung the mount")
        assert "OPENED" in out or "ERR" in out, out
        # the mount still serves
        assert (mnt / "other").read_bytes() == b"still served"
