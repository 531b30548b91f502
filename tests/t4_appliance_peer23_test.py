"""An appliance's unix socket served by another user is not used (x23).

A clamd socket in a directory others may write (clamd's sample `LocalSocket` is
/tmp/clamd.socket) can be bound by any user while clamd is down or restarting (during
an outage, say). vfile then passed that user FILDES descriptors of the files it
scanned, opened by root (every byte readable), and trusted the verdicts they sent
back (an infected file called clean was served). The client now asks who listens
(SO_PEERCRED): root, vfile's own user, or the owner of the socket's directory (clamd's
own /run/clamav); anyone else is an appliance error (the fail mode applies)."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from lifecycle import READER_UID
from mounting import mounted
from otheruser import closed_tree, searchable_checkout

pytestmark = pytest.mark.mount

def test_a_socket_served_by_another_user_gets_no_descriptor(tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="x23-shared-"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(searchable_checkout())
        stack.callback(shutil.rmtree, shared, ignore_errors=True)
        shared.chmod(0o1777)  # like /tmp: anyone may bind a name that is free
        sock = shared / "clamd.socket"
        app = subprocess.Popen(
            ["setpriv", f"--reuid={READER_UID}", f"--regid={READER_UID}", "--clear-groups",
             sys.executable, "-m", "vfile", "appliance", "serve", "--listen",
             f"unix://{sock}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                assert app.poll() is None and time.monotonic() < deadline, "no appliance"
                time.sleep(0.05)
            src, mnt, conf = closed_tree(tmp_path)
            with mounted(src, mnt, "--state-dir", str(tmp_path / "state"), "--config",
                         str(conf), "--appliance", f"clamd://{sock}"):
                with pytest.raises(OSError) as err:
                    (mnt / "secret").read_bytes()  # scanned by that user's appliance
                assert err.value.errno == errno.EACCES
        finally:
            app.kill()
            app.wait(10)
