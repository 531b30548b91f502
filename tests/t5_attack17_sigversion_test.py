"""Attack on verdict labels through a real mount: a scan judged by the old signatures
whose reply comes after the mount learned a signature update.

The appliance (`vfile appliance serve`, clamd's protocol over a unix socket) judges
a file as soon as it has read it and holds the reply back (`slowscan`: a busy
clamd, a long drain batch); meanwhile its signatures are updated to detect the file
and the mount's health probe learns the new version. The open that asked gets the
answer it waited for (judged before the update); but the verdict must not be stored
as one of the new signatures: the next open scans again and is denied.
(In-process, the same for pipelined batches: tests/t1_attack17_sigversion_test.py.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from filtering import Opened, timed_read
from mounting import mounted, wait_for
from outage import running_appliance, status

pytestmark = pytest.mark.mount

SIZE = 4 << 20
HOLD_S = 6.0  # the appliance holds each scan reply back this long

CONFIG = """\
[pool]
attempt_timeout = "30s"
probe_interval = "200ms"
retries = 0

[[profile]]
name = "default"
fail_mode = "closed"
deadline = "30s"
attempt_timeout = "30s"
retries = 0
"""


def _rchar(pid: int) -> int:
    """Bytes the process read so far (pread of a passed descriptor included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def _sig_version(mnt: Path) -> str:
    [app] = status(mnt)["appliances"]
    return str(app["sig_version"])


def test_a_verdict_judged_before_an_update_is_not_stored_as_one_of_it(tmp_path: Path) -> None:
    src, mnt, sigdir = tmp_path / "src", tmp_path / "mnt", tmp_path / "sigs"
    for d in (src, mnt, sigdir):
        d.mkdir()
    data = os.urandom(SIZE)
    (src / "x.bin").write_bytes(data)
    cfg = tmp_path / "vfile.toml"
    cfg.write_text(CONFIG)
    with running_appliance(sigdir) as app, \
            mounted(src, mnt, "--state-dir", str(tmp_path / "state"), "--config", str(cfg),
                    "--appliance", app.url):
        old = _sig_version(mnt)
        app.set_fault(f"slowscan={HOLD_S:g}s")
        before = _rchar(app.proc.pid)
        first: list[Opened] = []
        reader = threading.Thread(target=lambda: first.append(timed_read(mnt / "x.bin", 60)),
                                  daemon=True)
        reader.start()
        # The appliance read the whole file: it judged it (clean: no signature yet) and
        # now holds its reply back.
        wait_for("the appliance to read x.bin", lambda: _rchar(app.proc.pid) - before >= SIZE)
        time.sleep(0.5)  # its match follows its last read at once; not a timing assertion
        (sigdir / "new.hdb").write_text(f"{hashlib.md5(data).hexdigest()}:{SIZE}:New.Malware\n")
        app.reload()
        wait_for("the mount to learn the update", lambda: _sig_version(mnt) != old, 30)
        reader.join(60)
        [got] = first
        assert got.data == data, got  # the answer it asked for, judged before the update
        app.set_fault("none")
        # Judged by the old signatures: not current; scanned again, and the update detects it.
        again = timed_read(mnt / "x.bin", 60)
        assert again.errno == errno.EACCES, again
