"""Shared by the queued-intent race tests (tests/t5_queued_race*_test.py): a mount whose
state directory is on a loop ext4, frozen and thawed without a fork, and "settled".

    with server_on_loop_disk(tree, prepare) as (state, args, server):
        with frozen_until_thawed(state) as thaw:   # creates' intents stay queued
            ...
            thaw()
        wait_until(lambda: settled(mnt), "settled", DEADLINE)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from lifecycle import Tree, tree_config, wait_until
from mounting import Server, mounted
from outage import running_appliance, signature_version, status
from statedisks import loop_ext4

from vfile.passthrough.syscalls import RENAME_EXCHANGE, renameat2

#: generous: a loaded 2-core machine runs several suites at once
DEADLINE = 60.0


def waiting_in_kernel(tid: int) -> bool:
    """Thread `tid` of this process waits for a FUSE request's answer."""
    try:
        wchan = Path(f"/proc/self/task/{tid}/wchan").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False  # the thread ended (reading a dying task's wchan gives ESRCH)
    return "fuse" in wchan or "request_wait_answer" in wchan


def in_thread(step: Callable[[], None], errors: list[str]) -> threading.Thread:
    """Run `step` in a thread (its OSError goes to `errors`); return once it finished
    or its request waits in the server."""
    tid: list[int] = []

    def body() -> None:
        tid.append(threading.get_native_id())
        try:
            step()
        except OSError as err:
            errors.append(repr(err))

    th = threading.Thread(target=body, daemon=True)
    th.start()
    wait_until(lambda: not th.is_alive() or (tid and waiting_in_kernel(tid[0])),
               "the request waits for the server", DEADLINE)
    return th


def exchange(parent: Path, a: str, b: str) -> None:
    """RENAME_EXCHANGE of `a` and `b` in the directory `parent`."""
    d = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        renameat2(d, a.encode(), d, b.encode(), RENAME_EXCHANGE)
    finally:
        os.close(d)


def settled(mnt: Path) -> bool:
    """No create intent queued, no write intent pending, no scan or drain in flight."""
    st = status(mnt)
    gate = st["gate"]
    return (st["journal"]["durability"]["in_flight"] == 0 and gate["pending_intents"] == 0
            and not gate["in_flight"] and not st["drain"]["in_flight"])


def wait_settled(mnt: Path) -> None:
    """Wait until `settled`; failing, say what is still pending."""
    try:
        wait_until(lambda: settled(mnt), "every intent ended", DEADLINE)
    except AssertionError:
        raise AssertionError(f"still pending: {status(mnt)['gate']}") from None


@contextlib.contextmanager
def server_on_loop_disk(tree: Tree, prepare: Callable[[Path], None]
                        ) -> Iterator[tuple[Path, tuple[str, ...], Server]]:
    """A mount whose state directory is on a loop ext4 (yields it, the args, the server)."""
    with running_appliance() as app, loop_ext4(tree.root) as fs:
        state = fs / "state"
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        conf.write_text(conf.read_text().replace(str(tree.state), str(state)))
        args = ("--config", str(conf), "-v")
        with mounted(tree.source, tree.mountpoint, *args) as server:
            (tree.mountpoint / "warm").write_bytes(b"warm-up")
            wait_until(lambda: (tree.mountpoint / "warm").read_bytes()
                       and signature_version(state), "the signature version")
            prepare(tree.mountpoint)
            wait_until(lambda: settled(tree.mountpoint), "the warm-up settled", DEADLINE)
            yield state, args, server


#: FIFREEZE / FITHAW (linux/fs.h): fsfreeze(8) without a fork. A forked child closes
#: its copies of the writers' descriptors, and each close flushes through the mount: a
#: server killed while a thread of it waits on the frozen disk dies only at the thaw,
#: so a forked `fsfreeze -u` would wait for it forever.
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878


@contextlib.contextmanager
def frozen_until_thawed(state: Path) -> Iterator[Callable[[], None]]:
    """Freeze the file system holding `state`; yields `thaw()` (also run on the way out)."""
    fd = os.open(state.parent, os.O_RDONLY | os.O_DIRECTORY)
    thawed = False

    def thaw() -> None:
        nonlocal thawed
        if not thawed:
            fcntl.ioctl(fd, FITHAW, 0)
            thawed = True

    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
        yield thaw
    finally:
        try:
            thaw()
        finally:
            os.close(fd)
