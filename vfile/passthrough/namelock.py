"""Name operations against the move of a directory above them, in the server.

The kernel does not lock a directory renamed or exchanged within its parent
(Linux `vfs_rename` locks a subdirectory only when its parent changes), so a
rename, link, unlink or mknod inside `d0` can be in this server while `d0` and
`d1` are exchanged. Such a handler computes its source paths, waits (its write
intent's fsync), acts, and then tells the gate which paths changed: with the
paths computed before the exchange, the gate moved the intents and journal
entries of the files now under the other directory, and the writer's intent
stayed behind (tests/t5_race21_dirs_test.py).

`NameLock` orders them: a handler that holds source paths across a wait holds
the lock `shared`; a rename or exchange of a directory holds it `exclusive`, so
no path computed before it is used after it. A waiting exclusive holder keeps
new shared holders out (directory moves are rare, name operations are not, so
it would wait forever otherwise). No holder waits for another request of this
mount while it holds the lock, so it cannot deadlock with the kernel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class NameLock:
    """Shared by name operations, exclusive for directory moves (module doc)."""

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive holders waiting: new shared ones wait behind them
        self._lot = trio.lowlevel.ParkingLot()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._exclusive or self._waiting:
            await self._lot.park()
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            if not self._shared:
                self._lot.unpark_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._waiting += 1
        try:
            while self._exclusive or self._shared:
                await self._lot.park()
        except BaseException:  # cancelled while waiting: the shared ones behind it go on
            self._waiting -= 1
            self._lot.unpark_all()
            raise
        self._waiting -= 1
        self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            self._lot.unpark_all()
