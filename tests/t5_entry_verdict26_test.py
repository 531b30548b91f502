"""An open serves a file's verdict even while a journal entry says it is unscanned (u26).

The open path looks up a verdict by the file's identity (dev, ino, size, mtime, ctime,
signature version) and does not look at the journal's entry: the entry is the drain's
work list, not an invalidation. That is sound only if a verdict matching the identity
always judged the bytes the file holds (docs/limitations.md, "An entry beside a
matching verdict"). The attacks here try to make a clean verdict match infected
content, with the state disk's power cut (`tests/cutfs.py`: only fsynced bytes
survive) so that durable entries meet older durable verdicts at the next start:

- a hard link: a clean file linked, EICAR written through the new name (same size),
  its old mtime put back, then the first name unlinked (its survivor's kept verdict);
- a rename over: EICAR written to a new file and renamed onto a clean file;
- a rewrite in place, same size, the old mtime put back (`touch -r`).

Every infected file must be denied live and after the cut and the next start; none is
served (held on main too: a regression test of the argument).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from lifecycle import cli
from mounting import mounted
from outage import unaccounted, write_config
from powercut import cut_dirs, learn_signature, reboot
from queuedrace import wait_settled
from statedisks import cutfs

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

CLEAN = b"x" * len(EICAR)  # the same size as EICAR: only the times could tell them apart


def _served(path: Path) -> bool:
    """The mount served `path`'s bytes (EACCES: denied)."""
    try:
        return bool(path.read_bytes())
    except OSError as err:
        assert err.errno == errno.EACCES, err
        return False


def _config(tmp: Path) -> Path:
    """Infected files denied, not moved (they stay to be opened again); no background
    fsync: only tier-1 records and the quiesce make anything durable."""
    cfg = write_config(tmp / "vfile.toml", fail_mode="safe", deadline=2.0,
                       extra_profile='infected_action = "deny"\n')
    with cfg.open("a") as f:
        f.write('\n[journal]\nsync_interval = "60s"\n')
    return cfg


def _attack(mnt: Path) -> None:
    # A hard link; EICAR through it; the old mtime back; the first name unlinked.
    st = os.stat(mnt / "a")
    os.link(mnt / "a", mnt / "b")
    with open(mnt / "b", "r+b") as f:
        f.write(EICAR)
    os.utime(mnt / "b", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.unlink(mnt / "a")
    # EICAR renamed onto a clean file.
    (mnt / ".x").write_bytes(EICAR)
    os.rename(mnt / ".x", mnt / "r")
    # A rewrite in place, same size, the old mtime back.
    st = os.stat(mnt / "t")
    with open(mnt / "t", "r+b") as f:
        f.write(EICAR)
    os.utime(mnt / "t", ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("machine", ["disk", "machine"])
def test_no_clean_verdict_serves_infected_content_across_a_cut(tmp_path: Path, machine: str
                                                               ) -> None:
    """`disk`: only the state disk lost its unsynced writes (/run kept: the start walks
    only if the witness says commits were unsynced at the kill, which depends on whether
    the attack's last close scans committed before it: CI saw both); `machine`: the
    whole machine lost power (/run emptied): the start always walks."""
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    state = statefs / "state"
    args = ("--config", str(_config(tmp_path)), "--state-dir", str(state))
    (src / "warm").write_bytes(b"warm-up")
    infected = ["b", "r", "t"]
    with cutfs(disk, statefs):
        sig = learn_signature(src, mnt, state, args, ["warm"])
        with mounted(src, mnt, *args) as server:
            for n in ("a", "r", "t"):
                (mnt / n).write_bytes(CLEAN)
                assert (mnt / n).read_bytes() == CLEAN
            wait_settled(mnt)
            # Their clean verdicts durable (quiesce syncs the journal).
            assert cli("quiesce", str(mnt)).returncode == 0
            assert cli("resume", str(mnt)).returncode == 0
            _attack(mnt)
            server.proc.kill()
            server.proc.wait(30)
    if machine == "machine":
        reboot(state)
    with cutfs(disk, statefs):
        with mounted(src, mnt, *args) as restarted:
            served = [n for n in infected if _served(mnt / n)]
            wait_settled(mnt)
            if machine == "machine":
                assert "recovery walk" in restarted.log()
        assert served == []
        assert set(unaccounted(src, state, sig)) <= set(infected)


def test_no_clean_verdict_serves_infected_content_live(tmp_path: Path) -> None:
    src, mnt, _, statefs = cut_dirs(tmp_path)
    state = statefs / "state"
    args = ("--config", str(_config(tmp_path)), "--state-dir", str(state))
    with mounted(src, mnt, *args):
        for n in ("a", "r", "t"):
            (mnt / n).write_bytes(CLEAN)
            assert (mnt / n).read_bytes() == CLEAN
        wait_settled(mnt)
        _attack(mnt)
        served = [n for n in ("b", "r", "t") if _served(mnt / n)]
        wait_settled(mnt)
        served += [n for n in ("b", "r", "t") if _served(mnt / n)]
    assert served == []
