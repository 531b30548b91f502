"""Attack review a29: a quarantine copy that fills its disk leaves nothing behind.

Across file systems a quarantine is a copy (journal-safe: copy, fsync, unlink). A copy
that failed (ENOSPC: an infected file larger than the room left where the quarantine
is, which a local user can write on purpose) left its partial copy in the quarantine
directory: the disk stayed full (on the state disk: every journal write refused, so
every write through the mount EIO) until someone found the nameless leftover. Now
the partial copy is removed; the file stays in the source, refused by its infected
verdict. Through a real mount, the quarantine on a
1 MiB tmpfs and the infected file 3 MiB (matched by a generated hash signature).
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from lifecycle import wait_until
from mounting import mounted
from outage import running_appliance
from unread import read_errno

pytestmark = pytest.mark.mount


def test_a_quarantine_copy_that_fills_its_disk_leaves_nothing(tmp_path: Path,
                                                              small_state: Path) -> None:
    data = os.urandom(3 << 20)
    sigdir, src, mnt = tmp_path / "sigs", tmp_path / "src", tmp_path / "mnt"
    for d in (sigdir, src, mnt):
        d.mkdir()
    (sigdir / "big.hdb").write_text(f"{hashlib.md5(data).hexdigest()}:{len(data)}:Test.Big\n")
    (src / "big.bin").write_bytes(data)
    qdir = small_state / "quarantine"
    with running_appliance(sigdir) as app:
        conf = tmp_path / "vfile.toml"
        conf.write_text(f'[mount]\nappliances = ["{app.url}"]\n'
                        f'state_dir = "{tmp_path / "state"}"\nquarantine_dir = "{qdir}"\n'
                        '[pool]\nprobe_interval = "200ms"\n'
                        '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                        'infected_action = "quarantine"\n')
        with mounted(src, mnt, "--config", str(conf)) as server:
            assert read_errno(mnt / "big.bin") == errno.EACCES
            wait_until(lambda: "infected action quarantine on 'big.bin' failed"
                       in server.log(), "the quarantine tried")
            assert (src / "big.bin").read_bytes() == data  # still in the source
            assert read_errno(mnt / "big.bin") == errno.EACCES  # and refused
            left = {p.name: p.stat().st_size for p in qdir.iterdir()}
            # Before a29: the partial copy, the tmpfs's whole MiB.
            assert left == {}, left
            (small_state / "room").write_bytes(b"x" * (512 << 10))  # the room is back
