"""`vfile journal` / `vfile quarantine` given --state-dir while a mount uses it (nl22,
round-7 review): the offline commands did not look at state_dir/mount.lock, so an
administrator who thought the mount stopped purged its journal under it (a retry
given --state-dir changed entries the live drain holds in memory). Writes are now
refused, naming the mount's pid and pointing to --mount; reads go on; with the mount
gone, the same writes work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mounting import mounted
from outage import status

from vfile.errors import Exit

pytestmark = pytest.mark.mount

FILES = 5


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfile", *args], capture_output=True,
                          text=True, timeout=120, check=False)


WRITES = [("journal", "purge", "--yes"), ("journal", "retry"),
          ("journal", "exposures", "--clear-all"), ("quarantine", "delete", "0" * 32)]


def test_offline_writes_to_a_state_directory_in_use_are_refused(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    for d in (src, mnt):
        d.mkdir()
    for i in range(FILES):
        (src / f"f{i}").write_bytes(b"unscanned %d" % i)
    dead = "clamd://127.0.0.1:9"  # nothing listens: every open is journaled (fail-safe)
    with mounted(src, mnt, "--state-dir", str(state), "-a", dead,
                 "--fail-mode", "safe") as server:
        for i in range(FILES):
            (mnt / f"f{i}").read_bytes()
        assert status(mnt)["journal"]["deferred"] == FILES
        for write in WRITES:
            proc = _cli(*write, "--state-dir", str(state))
            assert proc.returncode == Exit.JOURNAL, (write, proc.stdout, proc.stderr)
            assert f"a vfile mount (pid {server.proc.pid}) uses this state directory" \
                in proc.stderr, (write, proc.stderr)
            assert "--mount" in proc.stderr
        assert status(mnt)["journal"]["deferred"] == FILES  # nothing purged under it
        for read in (("journal", "list"), ("journal", "stats"), ("quarantine", "list")):
            proc = _cli(*read, "--state-dir", str(state))
            assert proc.returncode == 0, (read, proc.stderr)
        proc = _cli("journal", "purge", "--yes", "--mount", str(mnt))  # live: allowed
        assert proc.returncode == 0, proc.stderr
        assert status(mnt)["journal"]["deferred"] == 0
    proc = _cli("journal", "purge", "--yes", "--state-dir", str(state))  # offline: allowed
    assert proc.returncode == 0, proc.stderr
