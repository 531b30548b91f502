"""A circuit breaker per appliance: a pure state machine over a clock value.

closed → (breaker_failures consecutive failures) → open → (cooldown elapsed)
→ half-open: one trial (a scan or a health probe) is let through; its success
closes the breaker, its failure opens it again for another cooldown.

Invariant: while open, `allow()` is False without any I/O — that is what
lets a request fail over or fail safe at once instead of waiting for a
timeout on an appliance already known to be down. The clock is passed in
(`now`), so the machine is tested without sleeping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(slots=True)
class Breaker:
    failures: int = 3
    cooldown: float = 5.0
    _consecutive: int = 0
    _opened_at: float | None = None
    _trial_out: bool = False
    _trips: int = 0  # consecutive `trip`s without a success: each doubles the retry

    def __post_init__(self) -> None:
        if self.failures < 1 or self.cooldown < 0:
            raise ValueError("breaker needs failures >= 1 and cooldown >= 0")

    def state(self, now: float) -> State:
        if self._opened_at is None:
            return State.CLOSED
        if now - self._opened_at >= self.cooldown:
            return State.HALF_OPEN
        return State.OPEN

    def half_open_at(self) -> float | None:
        """When the breaker is (or was) half-open again; None while closed."""
        return None if self._opened_at is None else self._opened_at + self.cooldown

    def would_allow(self, now: float) -> bool:
        """Whether a request could go through now (no state change)."""
        st = self.state(now)
        return st is State.CLOSED or (st is State.HALF_OPEN and not self._trial_out)

    def allow(self, now: float) -> bool:
        """Take permission for one request; in half-open only one trial at a time."""
        st = self.state(now)
        if st is State.CLOSED:
            return True
        if st is State.HALF_OPEN and not self._trial_out:
            self._trial_out = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive = 0
        self._trips = 0
        self._opened_at = None
        self._trial_out = False

    def record_failure(self, now: float) -> None:
        self._consecutive += 1
        if self._opened_at is not None or self._consecutive >= self.failures:
            # a failed half-open trial (or the threshold reached) opens it afresh
            self._opened_at = now
        self._trial_out = False

    def trip(self, now: float, retry_after: float) -> None:
        """Open now whatever the count (a liveness probe's evidence), half-open after
        `retry_after`, doubled for each trip since the last success, at most the
        cooldown: a false opening costs one trial, a real outage a few (the 2nd, 4th,
        8th... `retry_after`) before the breaker waits whole cooldowns."""
        retry = min(self.cooldown, retry_after * 2 ** min(self._trips, 30))
        self._trips += 1
        self._consecutive = max(self._consecutive, self.failures)
        self._opened_at = now - (self.cooldown - retry)
        self._trial_out = False

    def release(self) -> None:
        """Give back a half-open trial that ended with neither success nor failure."""
        self._trial_out = False
