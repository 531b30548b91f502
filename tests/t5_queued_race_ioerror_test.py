"""A tier-1 write intent the journal cannot make durable (its fsync fails: a failing state
disk) refuses the open with EIO and says so in one clear log line, not a traceback
(`mounted` fails a test whose server logged one)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from cutfs import fsync_fault
from lifecycle import open_errno, wait_until
from mounting import mounted
from outage import running_appliance, write_config
from queuedrace import settled
from statedisks import cutfs

pytestmark = pytest.mark.mount


def test_an_intent_io_error_is_one_clear_line(tmp_path: Path) -> None:
    src, mnt, disk, statefs = (tmp_path / n for n in ("src", "mnt", "disk", "statefs"))
    for p in (src, mnt, disk, statefs):
        p.mkdir()
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
            try:
                assert open_errno(mnt / "old", 0o1) == errno.EIO  # O_WRONLY: tier 1
            finally:
                fault.unlink()
            text = server.log()
            lines = [ln for ln in text.splitlines() if "write intent of 'old'" in ln]
            assert len(lines) == 1, text[-3000:]
            assert "answering EIO" in lines[0], lines
