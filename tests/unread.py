"""What the tests of new files and their close scans share (t5_unread_attack25,
t5_rsync_waits24, t5_unrecorded, t5_unrecorded_attack23): a `safe` profile on the
embedded appliance, a file made with rsync's steps, the errno of a read, a warmed-up
mount; and `HOLD_UNREAD`, a server patch that holds a named file's close scan unread
until a change to the file lands and while changes keep landing (the race those
attacks need, made certain)."""

from __future__ import annotations

import os
from pathlib import Path

from mounting import wait_for
from outage import signature_version
from queuedrace import wait_settled

from vfile.scanner.signatures import EICAR


def safe_config(root: Path, state: Path, extra: str = "") -> Path:
    """The embedded default appliance (no `appliances`), a `safe` profile that scans
    after writes; `extra` appended (a profile key, or a section such as a far-away
    background sync)."""
    conf = root / "vfile.toml"
    conf.write_text(f'[mount]\nstate_dir = "{state}"\n'
                    f'quarantine_dir = "{root / "quarantine"}"\n'
                    '[[profile]]\nname = "default"\nfail_mode = "safe"\ndeadline = 2.0\n'
                    + extra)
    return conf


def read_errno(path: Path) -> int:
    """0 if `path` reads, else the read's errno (-1 if it had none)."""
    try:
        path.read_bytes()
    except OSError as err:
        return err.errno or -1
    return 0


def new_file(path: Path, data: bytes = EICAR) -> None:
    """rsync's steps for a new file: create (O_EXCL), write, close."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def warm(mnt: Path, state: Path, *, settle: bool = True) -> None:
    """A first file written and read until the signature version is known; `settle`:
    then wait until no close scan or intent is left."""
    (mnt / "warm").write_bytes(b"warm-up")
    wait_for("the signature version", lambda: (
        (mnt / "warm").read_bytes(), signature_version(state))[-1], 30)
    if settle:
        wait_settled(mnt)


#: what the server logs when the first change lands on a close scan `HOLD_UNREAD` holds
HOLD_UNREAD_LINE = "test patch: a change landed on a held close scan"

#: server patch (tests/serverpatches.py): the close scan of a file named in
#: VFILE_TEST_HOLD_UNREAD (comma-separated base names) stays unread until a change to the
#: file reaches `CloseScans.unread` (due 60 s on, the batch asleep), and each change then
#: moves its due time `HOLD_S` on rather than a tick: a caller changing the file faster
#: than a tick (an idle machine: thousands a second) however slowly this machine runs
#: it. Without it whether a change lands before the close scan reads the file, and the
#: next before that, is a race a loaded machine loses (r25: "no close scan held back" in
#: 20 tries under the full suite; t26: 0 of 5 under stress-ng).
HOLD_UNREAD = f"""
    import logging
    import os
    import time
    from vfile.filter import closelimits, closing

    HOLD_S = 3
    # Due times further ahead than the real code sets are read as a wall clock stepped
    # back (judged at once, a28): these holds are deliberate
    closelimits.AHEAD_MAX_NS = 120 * 10**9
    names = set(os.environ.get("VFILE_TEST_HOLD_UNREAD", "").split(","))
    held = []  # the intents of the named files' close scans
    real_submit = closing.CloseScans.submit
    real_unread = closing.CloseScans.unread

    def submit(self, path, intent, fd, profile, st=None):
        real_submit(self, path, intent, fd, profile, st)
        if os.path.basename(path) in names and self._queue[-1].intent is intent:
            self._queue[-1].due_ns = time.time_ns() + 60 * 10**9
            held.append(intent)

    def unread(self, intent, path=""):
        if not any(i is intent for i in held):
            return real_unread(self, intent, path)
        first = False
        for c in self._queue:
            if c.intent is intent:
                first = c.due_ns > time.time_ns() + 30 * 10**9
                c.due_ns = 0  # the real rule first (where it puts the scan in the queue)
        found = real_unread(self, intent, path)
        for c in self._queue:
            if c.intent is intent:
                c.due_ns = time.time_ns() + HOLD_S * 10**9
        self._wake.set()  # the batch may sleep until the due time it saw: look again
        if first:
            logging.getLogger("vfile").warning({HOLD_UNREAD_LINE!r})
        return found

    closing.CloseScans.submit = submit
    closing.CloseScans.unread = unread
"""
