"""A tier-1 write intent the journal cannot make durable (its fsync fails: a failing state
disk) refuses the open with EIO and says so in one clear log line, not a traceback
(`mounted` fails a test whose server logged one)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cutfs import fsync_fault
from lifecycle import open_errno, wait_until
from mounting import mounted
from outage import running_appliance, write_config
from powercut import cut_dirs
from queuedrace import settled
from statedisks import cutfs

pytestmark = pytest.mark.mount


def test_an_intent_io_error_is_one_clear_line(tmp_path: Path) -> None:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    (src / "old").write_bytes(b"an existing file")
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    fault = fsync_fault(disk)
    with running_appliance() as app, cutfs(disk, statefs):
        args = ("--appliance", app.url, "--config", str(cfg),
                "--state-dir", str(statefs / "state"))
        with mounted(src, mnt, *args, "-v") as server:
            (mnt / "warm").write_bytes(b"warm-up")
            wait_until(lambda: settled(mnt), "the warm-up settled")
            fault.touch()
            try:  # O_TRUNC changes the content at once: its intent is fsynced in the open
                assert open_errno(mnt / "old", os.O_WRONLY | os.O_TRUNC) == errno.EIO
                # Without O_TRUNC the open returns and the first WRITE waits for the
                # intent's fsync (vfile.filter.writeintents): the EIO shows at close.
                fd = os.open(mnt / "old", os.O_WRONLY)
                os.write(fd, b"X")
                with pytest.raises(OSError) as closing:
                    os.close(fd)
                assert closing.value.errno == errno.EIO
            finally:
                fault.unlink()
            assert (src / "old").read_bytes() == b"an existing file"
            text = server.log()
            lines = [ln for ln in text.splitlines() if "write intent of 'old'" in ln]
            assert len(lines) == 2, text[-3000:]  # one clear line per refused operation
            assert "answering EIO" in lines[0], lines
            assert "its write fails with EIO" in lines[1], lines
