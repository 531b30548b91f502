"""The source's own durability before the watermark passes it: `syncfs(2)` of the source.

The rule (README "Durability of journal records", "The source's data before W"): a
record that vouches for the source's content is made durable only after that content
is durable on the source. The watermark W says "every file with ctime at or below W
is as the journal knows it": a file with no entry and a clean verdict for its identity
is served unscanned. On ext4 a file's new times reach the disk with the next journal
commit (5 s), its data only at writeback (up to 30 s, delayed allocation), so after a
power loss a file can show a ctime at or below W with its old bytes (an overwrite in
place) or none (a new file). So the background sync (`Journal.advance_watermark`)
reads the clock t0, has the source synced here, and stores W = t0 - margin only once
that sync returned: every write before t0 is then on the source's disk.

A frozen or hung source never returns from syncfs: the sync runs in a thread of its
own, the caller waits for it with a deadline, and at most one is in flight. One that
returns late still counts, for the t0 it was started with.

Invariants:
- `wait` returns a t0 only for a sync that began after t0 and returned without error.
- At most one sync thread at a time: a hung source costs one thread, not one a round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import outcome
import trio

log = logging.getLogger(__name__)

#: test hook: "stall" makes every sync hang as on a frozen source (never returns)
STALL_ENV = "VFILE_SOURCE_SYNC"


def _stall() -> None:
    while True:  # a frozen source, for tests: the thread never ends
        time.sleep(3600)


@dataclass
class _InFlight:
    t0: int
    done: trio.Event = field(default_factory=trio.Event)
    #: set by the sync's own thread: `sync_blocking` (a close, its trio loop busy) waits on it
    returned: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    warned: bool = False  # its timeout logged once, not every round of a frozen source
    started: float = field(default_factory=time.monotonic)


@dataclass
class Counters:
    syncs: int = 0
    timeouts: int = 0  # rounds whose W did not advance: the source's sync not back in time
    failures: int = 0
    ms_total: int = 0
    ms_max: int = 0


class SourceSync:
    """Syncs of the source's file system, one in flight at a time (module doc)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        """`sync`: blocking, one syncfs(2) of the source's file system (the mount's)."""
        self._sync = _stall if os.environ.get(STALL_ENV) == "stall" else sync
        self._inflight: _InFlight | None = None
        self.counters = Counters()

    def start(self, t0: int) -> None:
        """Begin a sync of the source for clock reading `t0`, unless one is in flight."""
        if self._inflight is not None:
            return
        job = self._inflight = _InFlight(t0)
        token = trio.lowlevel.current_trio_token()

        def ended(result: outcome.Outcome[None]) -> None:
            job.returned.set()
            with contextlib.suppress(trio.RunFinishedError):  # the mount is gone
                token.run_sync_soon(self._ended, job, result)

        trio.lowlevel.start_thread_soon(self._sync, ended, name="source syncfs")

    def _ended(self, job: _InFlight, result: outcome.Outcome[None]) -> None:
        ms = int((time.monotonic() - job.started) * 1000)
        c = self.counters
        c.ms_total += ms
        c.ms_max = max(c.ms_max, ms)
        try:
            result.unwrap()
            c.syncs += 1
        except Exception as err:
            c.failures += 1
            job.error = err
            log.error("source sync failed: %s (the watermark waits for the next one)", err)
        job.done.set()

    async def wait(self, timeout: float) -> int | None:
        """The t0 of the sync in flight once it returned without error (and it is done
        with); None if it failed, or is not back within `timeout` (it stays in flight)."""
        job = self._inflight
        if job is None:
            return None
        with trio.move_on_after(timeout):
            await job.done.wait()
        if not job.done.is_set():
            self.counters.timeouts += 1
            if not job.warned:
                job.warned = True
                log.warning("source sync not back after %.0f s (frozen source?): the "
                            "watermark stays where it is until it is",
                            time.monotonic() - job.started)
            return None
        self._inflight = None
        return None if job.error is not None else job.t0

    def sync_blocking(self, timeout: float) -> bool:
        """One sync from a plain thread (a close, no trio loop needed): True once it
        returned without error within `timeout`; a hung one is left behind."""
        job, started = self._inflight, time.monotonic()
        if job is not None and not job.returned.wait(timeout):
            log.error("source sync at close: an earlier one is still not back")
            return False  # the source is stuck in it
        timeout = max(0.0, timeout - (time.monotonic() - started))
        result: list[BaseException | None] = []

        def run() -> None:
            try:
                self._sync()
                result.append(None)
            except Exception as err:
                result.append(err)

        t = threading.Thread(target=run, name="source syncfs (close)", daemon=True)
        t.start()
        t.join(timeout)
        if not result or result[0] is not None:
            log.error("source sync at close: %s", result[0] if result else "not back in time")
            return False
        return True

    def statistics(self) -> dict[str, int]:
        c = self.counters
        return {"source_syncs": c.syncs, "source_sync_timeouts": c.timeouts,
                "source_sync_failures": c.failures, "source_sync_ms_total": c.ms_total,
                "source_sync_ms_max": c.ms_max}
