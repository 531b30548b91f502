"""Rate-limited logging: a dead appliance must not write a line per open()."""

from __future__ import annotations

import collections
import logging

import trio


class RateLimited:
    """Log a line at most once per interval per key, counting what it swallowed."""

    def __init__(self, interval: float, logger: logging.Logger) -> None:
        self.interval = interval
        self._log = logger
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None:
        now = trio.current_time()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        if more:
            self._log.log(level, msg + " (and %d more like it)", *args, more)
        else:
            self._log.log(level, msg, *args)
