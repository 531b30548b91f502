"""Write intents through a real mount: every intent is resolved or rolled back.

An intent (a path's "being written" mark, made durable before the operation)
that nothing resolves turns off the cached-open fast path for the whole mount,
makes the drain answer "still being written" for its entry until it is
poisoned, and counts in the scan-debt quota. Each operation here makes one,
succeeding or failing; afterwards `pending_intents` is back to zero and the
journal drains.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess

import pytest
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, status

from vfile.passthrough.syscalls import RENAME_EXCHANGE, renameat2
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

#: infected files are only denied (not moved), so the test can open them again
_DENY = '[[profile]]\nname = "default"\ninfected_action = "deny"\n'


def _errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as err:
        return err.errno or -1
    return 0


def _pending(t: Tree) -> int:
    return int(status(t.mountpoint)["gate"]["pending_intents"])


def test_intents_of_succeeding_and_failing_operations_are_released(tree: Tree) -> None:
    src, mnt = tree.source, tree.mountpoint
    (src / "eicar.com").write_bytes(EICAR)
    os.chmod(src / "eicar.com", 0o666)
    (src / "big").write_text("not so big\n")
    (src / "dir").mkdir()
    (src / "dir" / "inside").write_text("keeps the directory non-empty\n")
    busy = src / "busy"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", busy)
    os.chmod(busy, 0o777)
    with running_appliance() as app, \
            mounted(src, mnt, "--config", str(tree_config(tree, app, _DENY))):
        assert _pending(tree) == 0

        # Succeeding operations with no open handle afterwards.
        os.mknod(mnt / "node", 0o644 | stat.S_IFREG)
        (mnt / "a").write_text("a\n")
        os.link(mnt / "a", mnt / "a.link")
        (mnt / "b").write_text("b\n")
        dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            renameat2(dfd, b"a", dfd, b"b", RENAME_EXCHANGE)
        finally:
            os.close(dfd)

        # Failing ones.
        assert _errno_of(os.open, mnt / "eicar.com", os.O_RDWR) == errno.EACCES  # denied
        runner = subprocess.Popen([str(busy), "60"])  # the source file is being executed
        try:
            assert _errno_of(os.open, mnt / "busy", os.O_RDWR) == errno.ETXTBSY  # backing open
        finally:
            runner.kill()
            runner.wait()
        assert _errno_of(os.truncate, mnt / "big", 1 << 62) == errno.EFBIG  # ext4's limit
        fd = os.open(mnt / "big", os.O_WRONLY)
        try:
            assert _errno_of(os.ftruncate, fd, 1 << 62) == errno.EFBIG  # through a handle
        finally:
            os.close(fd)
        assert _errno_of(os.rename, mnt / "a.link", mnt / "dir") in (errno.EISDIR,
                                                                     errno.ENOTEMPTY)

        wait_until(lambda: _pending(tree) == 0, "no write intent is left pending")
        # And nothing is stuck for the drain as "still being written".
        wait_until(lambda: status(tree.mountpoint)["journal"]["deferred"] == 0,
                   "the journal drained")
        assert (mnt / "big").read_text() == "not so big\n"
        assert (mnt / "b").read_text() == "a\n"
