"""Name operations racing creates whose intents are still QUEUED (not committed).

A create no longer waits for its intent's commit (journal.inflight,
vfile.filter.newfiles): the record is queued and the create goes on. Here the
state directory is a loop ext4 frozen while files are created through the mount,
so their intents stay queued, deterministically; then each file is renamed
(plain, RENAME_NOREPLACE, RENAME_EXCHANGE), renamed over, hard-linked and
unlinked, its directory renamed or exchanged, with its writer still holding it
open or after its close (its close scan then waits for the intent's commit).
Operations that make a tier-1 record wait for the thaw; they were issued while
the intents were queued (checked: every one is waiting in the kernel for the
server's answer before the thaw).

The promise checked (tests/outage.py `unaccounted`): every file that exists in
the source has a journal entry under its current name or a clean verdict for its
current identity,
- on the live mount, after the thaw, after the drain has had a look at every
  file a writer still holds open, and after those writers wrote more and closed;
- after a SIGKILL of that server and a restart;
- after a SIGKILL while the disk is still frozen (intents queued, operations
  waiting) and a restart (which must walk).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lifecycle import Tree, wait_until
from mounting import force_unmount, mounted
from outage import signature_version, status, unaccounted
from queuedrace import (
    DEADLINE,
    frozen_until_thawed,
    server_on_loop_disk,
    settled,
    waiting_in_kernel,
)

from vfile.journal import Journal
from vfile.passthrough.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2

pytestmark = pytest.mark.mount

@dataclass
class Race:
    """The files of one mount's scenario: writers kept open and operations in threads."""

    mnt: Path
    open_files: dict[str, int] = field(default_factory=dict)  # current name -> fd
    threads: list[tuple[str, threading.Thread, list[int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def create(self, name: str, *, keep_open: bool = False) -> None:
        fd = os.open(self.mnt / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, b"first bytes of %s\n" % name.encode())
        if keep_open:
            self.open_files[name] = fd
        else:
            os.close(fd)

    def moved(self, old: str, new: str) -> None:
        """The writer of `old` (if any) now writes the file named `new`."""
        if old in self.open_files:
            self.open_files[new] = self.open_files.pop(old)

    def run(self, what: str, *steps: Callable[[], None]) -> None:
        """Run `steps` in order in a thread of their own (the first may wait for the thaw)."""
        tid: list[int] = []

        def body() -> None:
            tid.append(threading.get_native_id())
            for step in steps:
                try:
                    step()
                except OSError as err:
                    self.errors.append(f"{what}: {err!r}")
                    return

        th = threading.Thread(target=body, daemon=True, name=what)
        th.start()
        self.threads.append((what, th, tid))
        # Its request reaches the server (or it is done) before the next case starts.
        wait_until(lambda: not th.is_alive() or (tid and waiting_in_kernel(tid[0])),
                   f"{what} waits for the server", DEADLINE)

    def join(self) -> None:
        for what, th, _ in self.threads:
            th.join(DEADLINE)
            assert not th.is_alive(), f"{what} did not finish after the thaw"

    def finish_writers(self) -> None:
        for name, fd in list(self.open_files.items()):
            os.write(fd, b"more bytes, written after the operation\n")
            os.close(fd)
            del self.open_files[name]

    def abandon_writers(self) -> None:
        for fd in self.open_files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.open_files.clear()


def _dirfd(mnt: Path) -> int:
    return os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)


def _renameat2(mnt: Path, old: str, new: str, flags: int) -> Callable[[], None]:
    def step() -> None:
        d = _dirfd(mnt)
        try:
            renameat2(d, old.encode(), d, new.encode(), flags)
        finally:
            os.close(d)
    return step


CASES = ("ren", "reno", "nor", "noro", "xold", "xoldo", "xnew", "over", "overo", "overnew",
         "link", "linko", "hard", "unl", "unlo", "dir", "xdir", "reuse")


def _stage(race: Race) -> None:
    """Create the new files (intents queued: the disk is frozen), then start every
    operation. Each case has a directory of its own: the kernel holds a directory's
    lock through a rename or link in it, so a second operation in the same directory
    would wait in the kernel, not race in the server. `*/old` files existed (scanned
    clean) before the freeze."""
    m = race.mnt
    r, c = race.run, race.create
    keep = {"reno/n", "noro/n", "xoldo/n", "xnew/a", "overo/n", "overnew/b", "linko/n",
            "hard/n", "unlo/n", "dir/d/n", "xdir/a/n"}
    for name in ("ren/n", "reno/n", "nor/n", "noro/n", "xold/n", "xoldo/n", "xnew/a",
                 "xnew/b", "over/n", "overo/n", "overnew/a", "overnew/b", "link/n",
                 "linko/n", "hard/n", "unl/n", "unlo/n", "dir/d/n", "dir/d/c", "xdir/a/n",
                 "xdir/b/n", "reuse/n"):
        c(name, keep_open=name in keep)
    for case in ("ren", "reno"):
        race.moved(f"{case}/n", f"{case}/m")
        r(case, lambda case=case: os.rename(m / case / "n", m / case / "m"))
    for case in ("nor", "noro"):
        race.moved(f"{case}/n", f"{case}/m")
        r(case, _renameat2(m, f"{case}/n", f"{case}/m", RENAME_NOREPLACE))
    for case in ("xold", "xoldo"):
        race.moved(f"{case}/n", f"{case}/old")
        r(case, _renameat2(m, f"{case}/n", f"{case}/old", RENAME_EXCHANGE))
    race.moved("xnew/a", "xnew/b")
    r("xnew", _renameat2(m, "xnew/a", "xnew/b", RENAME_EXCHANGE))
    for case in ("over", "overo"):
        race.moved(f"{case}/n", f"{case}/old")
        r(case, lambda case=case: os.rename(m / case / "n", m / case / "old"))
    race.moved("overnew/b", "overnew/gone")  # renamed over: its writer goes on, no name
    r("overnew", lambda: os.rename(m / "overnew/a", m / "overnew/b"))
    for case in ("link", "linko"):
        race.moved(f"{case}/n", f"{case}/l")
        r(case, lambda case=case: os.link(m / case / "n", m / case / "l"),
          lambda case=case: os.unlink(m / case / "n"))
    r("hard", lambda: os.link(m / "hard/n", m / "hard/l"))  # both names stay
    r("unl", lambda: os.unlink(m / "unl/n"), lambda: c("unl/n"))
    race.moved("unlo/n", "unlo/gone")
    r("unlo", lambda: os.unlink(m / "unlo/n"))
    race.moved("dir/d/n", "dir/e/n")
    r("dir", lambda: os.rename(m / "dir/d", m / "dir/e"))
    race.moved("xdir/a/n", "xdir/b/n")
    r("xdir", _renameat2(m, "xdir/a", "xdir/b", RENAME_EXCHANGE))
    # A closed file's close scan waits for its intent; meanwhile the name is reused.
    r("reuse", lambda: os.rename(m / "reuse/n", m / "reuse/m"), lambda: c("reuse/n"),
      lambda: os.rename(m / "reuse/m", m / "reuse/n"))


def _prepare(mnt: Path) -> None:
    """Before the freeze: the case directories and the files that exist already."""
    for case in CASES:
        (mnt / case).mkdir()
    for d in ("dir/d", "xdir/a", "xdir/b"):
        (mnt / d).mkdir()
    for case in ("xold", "xoldo", "over", "overo"):
        (mnt / case / "old").write_bytes(b"an older file in %s\n" % case.encode())


def _drain_looked(state: Path, names: list[str], before: dict[str, int]) -> bool:
    """The drain has tried each name since `before` (its attempts), or settled its entry."""
    with Journal.open(state, readonly=True) as j:
        for name in names:
            e = j.get_deferred(name)
            if e is not None and e.attempts <= before.get(name, 0):
                return False
    return True


def _attempts(state: Path, names: list[str]) -> dict[str, int]:
    with Journal.open(state, readonly=True) as j:
        return {n: e.attempts for n in names if (e := j.get_deferred(n)) is not None}


def test_operations_racing_queued_intents_lose_nothing(tree: Tree) -> None:
    mnt = tree.mountpoint
    with server_on_loop_disk(tree, _prepare) as (state, args, server), \
            frozen_until_thawed(state) as thaw:
        race = Race(mnt)
        _stage(race)
        assert status(mnt)["journal"]["durability"]["in_flight"] > 0, "no intent was queued"
        thaw()
        race.join()
        assert race.errors == [], race.errors
        # The drain looks at the files still being written (under their current names).
        live = [n for n in race.open_files if (tree.source / n).exists()]
        before = _attempts(state, live)
        wait_until(lambda: _drain_looked(state, live, before), "the drain looked", DEADLINE)
        # ... and counts what it found still being written apart from its errors
        assert status(mnt)["drain"]["done"].get("writing", 0) > 0, status(mnt)["drain"]
        race.finish_writers()
        wait_until(lambda: settled(mnt), "everything settled", DEADLINE)
        sig = signature_version(state)
        assert unaccounted(tree.source, state, sig) == [], "lost on the live mount"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        force_unmount(mnt)
        with mounted(tree.source, mnt, *args):
            assert unaccounted(tree.source, state, sig) == [], "lost after SIGKILL"
        _expected_names(tree.source)


def test_sigkill_while_operations_wait_on_queued_intents(tree: Tree) -> None:
    mnt = tree.mountpoint
    with server_on_loop_disk(tree, _prepare) as (state, args, server), \
            frozen_until_thawed(state) as thaw:
        sig = signature_version(state)
        race = Race(mnt)
        _stage(race)
        assert status(mnt)["journal"]["durability"]["in_flight"] > 0, "no intent was queued"
        server.proc.send_signal(signal.SIGKILL)
        thaw()  # a thread of it may be waiting on the frozen disk: it dies at the thaw
        server.proc.wait(30)
        race.abandon_writers()
        race.join()  # their requests failed with the server gone
        force_unmount(mnt)
        lost = unaccounted(tree.source, state, sig)
        assert lost, "the intents were not queued at the kill"
        with mounted(tree.source, mnt, *args) as again:
            text = again.log()
            assert unaccounted(tree.source, state, sig) == [], text[-3000:]
        assert "recovery walk" in text


def _expected_names(source: Path) -> None:
    """The operations did what they say (the scenario is the one described)."""
    names = {str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()}
    for want in ("ren/m", "noro/m", "xoldo/old", "xoldo/n", "xnew/a", "xnew/b", "over/old",
                 "link/l", "linko/l", "hard/n", "hard/l", "unl/n", "dir/e/n", "dir/e/c",
                 "xdir/a/n", "xdir/b/n", "reuse/n"):
        assert want in names, sorted(names)
    for gone in ("ren/n", "link/n", "linko/n", "unlo/n", "reuse/m", "overnew/a"):
        assert gone not in names, sorted(names)
