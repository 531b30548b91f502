"""The gate's scans in flight: single-flight scans, cancel scopes, background tasks.

Invariants:
- Concurrent opens of one identity (at one signature version) share one scan
  (a `Flight`): the first open launches it, the others join it.
- Every wait and scan in flight registers its cancel scope in `Scopes`, so a
  window cancels them all at once (`Scopes.cancel_all`).
- Background tasks (shared scans, close scans, verdict stores) run in the
  gate's own nursery (`Tasks.serve`): a waiter cancelled by a FUSE interrupt
  neither kills a scan for the others nor pulls its descriptor from under it.
  A task that raises is logged, never raised into the nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from vfile.filter.policy import ScanResult
from vfile.journal.records import Identity
from vfile.scanner.verdict import Verdict

#: the gate's logger: operators filter and alert on it (the gate split kept its name)
log = logging.getLogger("vfile.filter.gate")

VerdictKey = tuple[Identity, str]


@dataclass(eq=False)
class Flight:
    """One scan in flight, shared by every open of the same identity."""

    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)
    result: ScanResult = ScanResult.NOT_ATTEMPTED
    verdict: Verdict | None = None


class Scopes:
    """The cancel scopes of every wait and scan in flight (a window cancels them all)."""

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()

    @contextmanager
    def watching(self, scope: trio.CancelScope) -> Iterator[None]:
        """Register `scope` for as long as the block runs."""
        self._scopes.add(scope)
        try:
            yield
        finally:
            self._scopes.discard(scope)

    def cancel_all(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()


class Flights:
    """The single-flight scans by (identity, signature version)."""

    def __init__(self, scopes: Scopes) -> None:
        self._scopes = scopes
        self._flights: dict[VerdictKey, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def take_off(self, key: VerdictKey, deadline: float,
                 launch: Callable[[Flight], None]) -> tuple[Flight, bool]:
        """The flight of `key`: joined if one is in the air (True), else a new one
        `launch`ed with a scope of `deadline` seconds (False)."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight, True
        flight = Flight(trio.CancelScope(deadline=trio.current_time() + deadline))
        self._flights[key] = flight
        try:
            launch(flight)
        except BaseException:
            self._flights.pop(key, None)
            raise
        return flight, False

    def land(self, key: VerdictKey) -> None:
        """The scan of `key` is over: the next open starts a new one."""
        self._flights.pop(key, None)

    async def wait(self, flight: Flight, deadline: float) -> tuple[ScanResult, Verdict | None]:
        """The flight's result, or TIMEOUT after `deadline` seconds (or a window)."""
        with trio.move_on_after(deadline) as wait, self._scopes.watching(wait):
            await flight.done.wait()
        if not flight.done.is_set():
            return ScanResult.TIMEOUT, None
        return flight.result, flight.verdict


class Tasks:
    """The gate's background tasks, in the nursery `serve` owns."""

    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of shared and background scans; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def start(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        if self._nursery is None:
            raise RuntimeError("Gate.serve() is not running")

        async def tracked() -> None:
            try:
                await fn(*args)
            except Exception:
                # A bug in one background scan must not take the mount down; its
                # journal entry (if any) stays for the drain.
                log.exception("background scan task failed")
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

        self._nursery.start_soon(tracked)
        if not self._busy:
            self._idle = trio.Event()
        self._busy += 1

    async def wait_idle(self) -> None:
        """Wait until no scan, verdict store or infected action is under way."""
        while self._busy:
            await self._idle.wait()
