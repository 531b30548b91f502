"""Quiesce / migration windows: a period during which no appliance is contacted.

A window is opened by `vfile quiesce` (a hypervisor's freeze hook) and closed by
`vfile resume` (the thaw hook) or by its `--max` duration running out, so a
forgotten window cannot last forever. This module only keeps the state and the
expiry timer; what "entering a window" does to in-flight scans is the
listeners' business (the gate cancels its waits), and the quiesce procedure
(cancel, sync journal and source) is orchestrated by the mount.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger(__name__)

#: a window with no --max still ends by itself after this long.
DEFAULT_MAX_WINDOW = 3600.0
#: the longest window a quiesce may ask for: every window ends by itself (b27: an
#: infinite one never did, and no appliance was contacted until a resume)
MAX_WINDOW = 86400.0

Listener = Callable[[bool], None]


class Window:
    def __init__(self) -> None:
        self._active = False
        self._opened_wall = 0.0
        self._deadline = math.inf
        self._reason = ""
        self._listeners: list[Listener] = []
        self._changed = trio.Event()
        self.count = 0

    @property
    def active(self) -> bool:
        return self._active

    def subscribe(self, listener: Listener) -> None:
        """`listener(active)` is called synchronously on every open and close."""
        self._listeners.append(listener)

    def open(self, max_duration: float | None = None, reason: str = "quiesce") -> None:
        limit = DEFAULT_MAX_WINDOW if max_duration is None else max_duration
        if not 0 < limit <= MAX_WINDOW:  # NaN too: a NaN deadline crashed `serve` (b27)
            raise ValueError(f"window duration must be positive and at most "
                             f"{MAX_WINDOW:g}s, not {limit:g}")
        self._deadline = trio.current_time() + limit
        if self._active:
            log.info("window extended (%s): ends within %.0fs", reason, limit)
            self._wake()
            return
        self._active = True
        self._opened_wall = time.time()
        self._reason = reason
        self.count += 1
        log.warning("window opened (%s): no appliance will be contacted for up to %.0fs",
                    reason, limit)
        self._notify()

    def close(self, reason: str = "resume") -> bool:
        """End the window; return whether one was active."""
        if not self._active:
            return False
        self._active = False
        self._deadline = math.inf
        log.warning("window closed (%s) after %.1fs", reason, time.time() - self._opened_wall)
        self._notify()
        return True

    def _notify(self) -> None:
        for listener in self._listeners:
            listener(self._active)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_closed(self) -> None:
        while self._active:
            await self._changed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close the window when its maximum duration runs out."""
        task_status.started()
        while True:
            changed = self._changed
            with trio.move_on_at(self._deadline):
                await changed.wait()
                continue
            if self._active:
                self.close(reason="maximum duration reached")

    def statistics(self) -> dict[str, Any]:
        remaining = max(0.0, self._deadline - trio.current_time()) if self._active else None
        return {"active": self._active, "reason": self._reason if self._active else "",
                "opened_at": self._opened_wall if self._active else None,
                "remaining_s": remaining, "windows_total": self.count}
