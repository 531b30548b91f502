"""One mount per state directory (found by the round-7 review, r21).

A second mount given a state directory a running mount uses would open the same
journal: its drain takes the first mount's entries, finds their files missing
from its own source and removes them, leaving the first mount's files with
neither an entry nor a verdict. The second mount must be refused (exit 7), and
the first one's journal left as it was.

Likewise `vfile journal` / `vfile quarantine` given --state-dir (nl22): they did not
look at state_dir/mount.lock, so an administrator who thought the mount stopped purged
its journal under it. Writes are now refused, naming the mount's pid and pointing to
--mount; reads go on; with the mount gone, the same writes work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mounting import Server, force_unmount, is_mounted, mounted
from outage import status

from vfile.errors import Exit
from vfile.journal import Journal

pytestmark = pytest.mark.mount

FILES = 30


DEAD = "clamd://127.0.0.1:9"  # nothing listens: every open is journaled (fail-safe)


@contextmanager
def journaled_mount(src: Path, mnt: Path, state: Path) -> Iterator[Server]:
    """A mount on `state` whose FILES files each have a journal entry."""
    for d in (src, mnt):
        d.mkdir(exist_ok=True)
    for i in range(FILES):
        (src / f"f{i}").write_bytes(b"unscanned %d" % i)
    with mounted(src, mnt, "--state-dir", str(state), "-a", DEAD,
                 "--fail-mode", "safe") as server:
        for i in range(FILES):
            assert (mnt / f"f{i}").read_bytes() == b"unscanned %d" % i
        assert status(mnt)["journal"]["deferred"] == FILES
        yield server


def test_a_second_mount_on_a_state_directory_in_use_is_refused(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src2, mnt2 = tmp_path / "src2", tmp_path / "mnt2"
    for d in (src2, mnt2):
        d.mkdir()
    with journaled_mount(src, mnt, state) as server:
        try:  # (before the fix, this second mount served: taken down below)
            proc = subprocess.run([sys.executable, "-m", "vfile", "mount", "--foreground",
                                   "--state-dir", str(state), str(src2), str(mnt2)],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert proc.returncode == Exit.JOURNAL, proc.stderr
            assert "another vfile mount uses this state directory" in proc.stderr
            assert f"(pid {server.proc.pid})" in proc.stderr
            assert not is_mounted(mnt2)
        finally:
            force_unmount(mnt2)
        assert status(mnt)["journal"]["deferred"] == FILES
    with Journal.open(state, readonly=True) as j:
        assert sorted(e.path for e in j.list_deferred()) == sorted(f"f{i}" for i in range(FILES))
    # Once the first mount is gone, the state directory is free again.
    with mounted(src, mnt, "--state-dir", str(state), "-a", DEAD, "--fail-mode", "safe"):
        assert status(mnt)["journal"]["deferred"] == FILES
    assert os.stat(state / "mount.lock").st_mode & 0o777 == 0o600


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfile", *args], capture_output=True,
                          text=True, timeout=120, check=False)


WRITES = [("journal", "purge", "--yes"), ("journal", "retry"),
          ("journal", "exposures", "--clear-all"), ("quarantine", "delete", "0" * 32)]


def test_offline_writes_to_a_state_directory_in_use_are_refused(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    with journaled_mount(src, mnt, state) as server:
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
