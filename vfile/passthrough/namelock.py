"""Name operations against the move of a directory above them, in the server.

The kernel does not lock a directory renamed or exchanged within its parent
(Linux `vfs_rename` locks a subdirectory only when its parent changes), so a
rename, link, unlink or mknod inside `d0` can be in this server while `d0` and
`d1` are exchanged. Such a handler computes its source paths, waits (its write
intent's fsync), acts, and then tells the gate which paths changed: with the
paths computed before the exchange, the gate moved the intents and journal
entries of the files now under the other directory, and the writer's intent
stayed behind (tests/t5_race21_dirs_test.py).

`NameLock` orders them by path: a handler that holds source paths across a wait
holds them `shared`; a rename or exchange of a directory holds its old and new
paths `exclusive`, which excludes every holder of a path at or below them (or
above them: a move of `a` waits for a move of `a/b`), so no path computed before
a move is used after it. Paths in unrelated directories do not meet: one name
operation stalled on a frozen state disk holds up the moves of its own
directories, and behind them the operations below those, not the mount's other
renames (before nl22 one lock for the whole mount did: tests/t5_namelock22_test.py).

Each holder computes its paths when it takes the lock (`paths()`, called again
after every wait: a move meanwhile changed them); the call and the check run with
no checkpoint between, so no move comes between them on the trio thread. A
waiting exclusive holder keeps new shared holders of related paths out (directory
moves are rare, name operations are not, so it would wait forever otherwise);
`nested` holders (a name operation adding a path while it holds others) wait
only for granted exclusive holders, so a move waiting for the outer hold cannot
deadlock with them. A granted exclusive holder never waits for the lock, and no
holder waits for another request of this mount while it holds it, so it cannot
deadlock with the kernel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

#: computes the source-relative paths a holder names, now
Paths = Callable[[], Sequence[bytes]]


def related(a: bytes, b: bytes) -> bool:
    """`a` and `b` are the same path or one is below the other (pure)."""
    if len(a) > len(b):
        a, b = b, a
    return b.startswith(a) and (len(a) == len(b) or not a or b[len(a)] == 0x2F)  # "/"


def fixed(*paths: bytes) -> Paths:
    """`Paths` that do not change (a holder checks them itself once it holds them)."""
    return lambda: paths


@dataclass(slots=True, eq=False)
class _Hold:
    paths: Sequence[bytes]
    exclusive: bool
    granted: bool

    def meets(self, paths: Sequence[bytes]) -> bool:
        return any(related(a, b) for a in self.paths for b in paths)


class NameLock:
    """Paths held shared by name operations, exclusive by directory moves (module doc)."""

    def __init__(self) -> None:
        self._shared: list[_Hold] = []
        #: granted and waiting (usually none: a name operation checks only these)
        self._exclusive: list[_Hold] = []
        self._lot = trio.lowlevel.ParkingLot()

    def _shared_blocked(self, paths: Sequence[bytes], nested: bool) -> bool:
        return any((h.granted or not nested) and h.meets(paths) for h in self._exclusive)

    def _exclusive_blocked(self, hold: _Hold) -> bool:
        return any(h.meets(hold.paths) for h in self._shared) or any(
            h.granted and h.meets(hold.paths) for h in self._exclusive)

    @asynccontextmanager
    async def shared(self, paths: Paths, *, nested: bool = False
                     ) -> AsyncIterator[Sequence[bytes]]:
        """Hold `paths()` (yielded) against moves of them or of a directory above them."""
        held = paths()
        while self._shared_blocked(held, nested):
            await self._lot.park()
            held = paths()
        hold = _Hold(held, exclusive=False, granted=True)
        self._shared.append(hold)
        try:
            yield held
        finally:
            self._release(hold)

    @asynccontextmanager
    async def exclusive(self, paths: Paths) -> AsyncIterator[Sequence[bytes]]:
        """Hold `paths()` (yielded) alone: no other holder of them, or of a path below
        or above them."""
        hold = _Hold(paths(), exclusive=True, granted=False)
        self._exclusive.append(hold)  # waiting: keeps new shared holders of its paths out
        try:
            while self._exclusive_blocked(hold):
                await self._lot.park()
                hold.paths = paths()
        except BaseException:  # cancelled while waiting: the shared ones behind it go on
            self._release(hold)
            raise
        hold.granted = True
        try:
            yield hold.paths
        finally:
            self._release(hold)

    def _release(self, hold: _Hold) -> None:
        (self._exclusive if hold.exclusive else self._shared).remove(hold)
        if self._lot:
            self._lot.unpark_all()
