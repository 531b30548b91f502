"""Storm-free signature updates inside a mount: the per-profile grace.

A verdict is valid for one signature version, so an update makes every
file's verdict stale at once, and the next boot or login storm would scan
everything again. A profile with `grace = "10m"` lets, for that long after
the mount sees the version change, a file whose verdict under the *previous*
version was clean (for its current identity, covering what the profile asks)
open at once. The policy answers such an open DEFER with reason `grace`
(`vfile.filter.policy`): the open is journaled like any unscanned read, so
the drain rescans it under the new version at its own rate limit, and the
rescan provably covers every carried-over verdict (a journal entry per file,
`vfile journal list` shows them with reason `grace`).

Invariants:
- Only a clean previous-version verdict is carried over; an infected one
  never is (it is not even looked at: the file is scanned as without grace).
- The grace is bounded: it starts when the gate first sees a version it has
  not seen before and ends `profile.grace` seconds later; a profile with no
  grace (the default, and what a `closed` profile should keep) never carries.
- A version that flaps back (appliances of one pool at different versions
  during a rolling update) ends the grace instead of starting a new one, so
  flapping can never stretch it.
- The previous version's verdicts are kept from the verdict collector while
  any profile's grace runs (`signatures`).

State is in memory: a mount restarted during a grace starts without one
(every stale file is then scanned, as without grace), except that the version
persisted by the mount (`assume`) makes a mount that boots after an update
see the change and start the grace.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable

from vfile.config.model import Profile
from vfile.filter import coverage
from vfile.journal.records import Identity, VerdictOutcome, VerdictRecord

#: a stored verdict for (identity, signature version): the gate's cache, then the journal
Find = Callable[[Identity, str], VerdictRecord | None]

#: versions remembered as "seen before" (flap detection)
SEEN_VERSIONS = 8
#: carried paths remembered for `carried_pending` (beyond that only counted, as
#: `carried_untracked`: their journal entries still make the drain rescan them)
MAX_PENDING = 65536


class Grace:
    """The mount's view of signature-version changes and the grace they open."""

    def __init__(self, profiles: Iterable[Profile], *, find: Find,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._find = find
        self._clock = clock
        self.current = ""
        #: the version before `current` while a grace may run ("" : none)
        self.previous = ""
        self._since = 0.0
        self._seen: collections.deque[str] = collections.deque(maxlen=SEEN_VERSIONS)
        self._longest = max((p.grace for p in profiles), default=0.0)
        #: opens answered from a previous-version verdict
        self.carried = 0
        #: carried paths whose journal entry the drain has not resolved yet
        self._pending: set[str] = set()
        self._pending_overflow = 0

    def assume(self, sig: str) -> None:
        """The version the mount last persisted: a different one seen next is an update."""
        if sig and not self.current:
            self.current = sig
            self._seen.append(sig)

    def observe(self, sig: str) -> None:
        """The gate's current signature version (called on every slow-path open)."""
        if not sig or sig == self.current:
            return
        if not self.current:
            self.current = sig  # the first version the mount learns of: nothing to carry
        elif sig in self._seen:
            self.current, self.previous = sig, ""  # flapping: end the grace
        else:
            self.current, self.previous, self._since = sig, self.current, self._clock()
        if sig not in self._seen:
            self._seen.append(sig)

    def previous_for(self, profile: Profile) -> str | None:
        """The version whose clean verdicts `profile` may carry over now, or None."""
        if profile.grace <= 0 or not self.previous:
            return None
        if self._clock() - self._since >= profile.grace:
            return None
        return self.previous

    def carries(self, identity: Identity, profile: Profile) -> bool:
        """Whether `identity` has a clean verdict at the previous version, covering what
        `profile` asks, while the profile's grace runs: the open may be carried over."""
        prev = self.previous_for(profile)
        if prev is None:
            return False
        rec = self._find(identity, prev)
        return rec is not None and rec.outcome == VerdictOutcome.CLEAN \
            and coverage.admits(rec, profile)

    def signatures(self) -> list[str]:
        """Versions whose verdicts must be kept (the previous one while a grace runs)."""
        running = self.previous and self._clock() - self._since < self._longest
        return [self.previous] if running else []

    def carried_over(self, path: str) -> None:
        self.carried += 1
        if len(self._pending) < MAX_PENDING:
            self._pending.add(path)
        else:
            self._pending_overflow += 1

    def settled(self, path: str) -> None:
        """The drain resolved `path` (scanned, or gone): no longer pending."""
        self._pending.discard(path)

    def moved(self, old: str, new: str) -> None:
        if old in self._pending:
            self._pending.discard(old)
            self._pending.add(new)

    def statistics(self) -> dict[str, object]:
        remaining = max(0.0, self._longest - (self._clock() - self._since)) \
            if self.previous else 0.0
        return {"current": self.current, "previous": self.previous or None,
                "active": remaining > 0, "remaining_s": round(remaining, 1),
                "carried": self.carried,
                "carried_pending": len(self._pending),
                "carried_untracked": self._pending_overflow}
