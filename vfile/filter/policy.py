"""The decision of DESIGN.md's table, as one pure, synchronous function.

`decide(DecisionInputs) -> Decision` does no I/O and keeps no state: the gate
gathers the facts (cached verdict, window, appliance health, scan result,
profile settings), asks, and carries the answer out. When the answer is SCAN
the gate scans and asks again with the result; with a result filled in the
answer is never SCAN, so the loop ends.

Invariants (checked exhaustively by tests/t0_policy_test.py):
- an infected verdict (cached or fresh) is never allowed, for every event;
- a reading open while another open may hold unflushed writes (`unflushed`) is
  never allowed as scanned: closed denies, safe defers, open logs the exposure;
- a tainted file (found infected, not scanned clean since) is never opened for
  reading without a clean verdict for its current content, in any profile;
- a current clean verdict is allowed (unless the quota made the profile
  read-only and the open is for writing);
- during a window or with the appliances known down, never SCAN;
- a `closed` profile (or a quota escalated to `closed`) never allows an open
  of an unscanned file; `safe` allows one only as DEFER (allow + journal);
  `open` allows one with the exposure flag set; the one exception, in every
  fail mode, is a grace carry-over (`Cached.GRACE`: clean under the previous
  signature version, within the profile's grace, no quota escalation, no
  pending write), which is always DEFER with reason GRACE, never a plain
  ALLOW, so the drain rescans it;
- every DEFER carries a reason the journal knows (`JOURNAL_REASONS`);
- `exposure` is set exactly when an open lets unscanned content through.

Events: OPEN (an open of a regular file, the caller waits), WRITE (an intent
to modify: must be journaled before it takes effect), CLOSE (the last writer
closed: a background scan resolves the intent; no one waits, so a missing
verdict only leaves the journal entry in place).
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass

from vfile.config.model import Escalation, FailMode, OversizeRule


class Event(enum.StrEnum):
    OPEN = "open"
    WRITE = "write"
    CLOSE = "close"


class Cached(enum.StrEnum):
    """The verdict stored for the file's current identity and signature version."""

    NONE = "none"
    CLEAN = "clean"
    INFECTED = "infected"
    #: none for this version, but a clean one for this identity at the previous
    #: signature version, and the profile's grace after the update has not run out
    #: (vfile.filter.grace)
    GRACE = "grace"


class ScanResult(enum.StrEnum):
    NOT_ATTEMPTED = "not-attempted"
    CLEAN = "clean"
    INFECTED = "infected"
    #: the appliances answered with an error, or none was reachable
    ERROR = "error"
    #: no answer within the profile's deadline
    TIMEOUT = "timeout"
    #: the pool had no healthy appliance when asked
    UNAVAILABLE = "unavailable"


class QuotaState(enum.StrEnum):
    """The profile's scan-debt state (vfile.filter.quota computes it)."""

    NONE = "none"
    CLOSED = "closed"
    READ_ONLY = "read-only"

    @classmethod
    def escalated(cls, how: Escalation) -> QuotaState:
        return cls.CLOSED if how is Escalation.CLOSED else cls.READ_ONLY


class Action(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    #: allow, after a durable journal entry (the caller awaits it first)
    DEFER = "defer"
    #: a verdict is needed: scan, then decide again with the result
    SCAN = "scan"


class Reason(enum.StrEnum):
    # The journal's reasons (journal.records.Reason has the same values).
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    WINDOW = "window"
    MODIFIED = "modified"
    QUOTA = "quota"
    OVERSIZE = "oversize"
    ERROR = "error"
    #: carried over from the previous signature version's clean verdict (grace)
    GRACE = "grace"
    # Reasons that never reach the journal.
    INFECTED = "infected"
    CLEAN = "clean"
    CACHED = "cached"
    NOT_TRIGGERED = "not-triggered"
    NEEDS_SCAN = "needs-scan"


JOURNAL_REASONS = frozenset({Reason.UNAVAILABLE, Reason.TIMEOUT, Reason.WINDOW, Reason.MODIFIED,
                             Reason.QUOTA, Reason.OVERSIZE, Reason.ERROR, Reason.GRACE})
#: reasons an ALLOW carries when the content is known to be (or need not be) scanned
SCANNED_OR_EXEMPT = frozenset({Reason.CLEAN, Reason.CACHED, Reason.NOT_TRIGGERED})

_FAILURE_REASON = {ScanResult.ERROR: Reason.ERROR, ScanResult.TIMEOUT: Reason.TIMEOUT,
                   ScanResult.UNAVAILABLE: Reason.UNAVAILABLE}


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    event: Event = Event.OPEN
    #: the event's trigger ("open" for OPEN, "close" for WRITE/CLOSE) is in the profile
    trigger_enabled: bool = True
    cached: Cached = Cached.NONE
    #: the file was modified and its intent is not resolved: a cached clean does not count
    write_pending: bool = False
    #: the open asks for write access
    writing: bool = False
    #: the open can read the content (not O_WRONLY)
    reading: bool = True
    window: bool = False
    appliance_down: bool = False
    oversize: bool = False
    oversize_rule: OversizeRule = OversizeRule.JOURNAL
    scan: ScanResult = ScanResult.NOT_ATTEMPTED
    fail_mode: FailMode = FailMode.SAFE
    quota: QuotaState = QuotaState.NONE
    #: the inode was found infected and no scan of its current content said clean since
    #: (journal.taint): a metadata change does not make it servable again
    tainted: bool = False
    #: another open of the file may write, and with the kernel's writeback cache its
    #: bytes can be in the page cache the reader will see but not yet in the source a
    #: scan reads: no scan or cached verdict speaks for what this open will see
    unflushed: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason
    #: unscanned content is let through to a reader (logged; journaled when DEFER)
    exposure: bool = False

    #: a DENY because the quota made the profile read-only (EROFS, not EACCES)
    read_only: bool = False

    @property
    def errno(self) -> int:
        """The errno a DENY fails the operation with."""
        # EROFS tells a writer the filesystem refuses writes, which is what a
        # read-only escalation means; everything else is a permission refusal.
        return errno.EROFS if self.read_only else errno.EACCES

    @property
    def allows(self) -> bool:
        return self.action in (Action.ALLOW, Action.DEFER)


_DENY_READ_ONLY = Decision(Action.DENY, Reason.QUOTA, read_only=True)


def _no_verdict(inp: DecisionInputs, reason: Reason) -> Decision:
    """No verdict can be had (now): the event's fail behaviour."""
    if inp.event is not Event.OPEN:
        # Nobody waits on a CLOSE scan: the write's journal entry stays for the drain.
        return Decision(Action.DEFER, reason)
    if inp.fail_mode is FailMode.CLOSED:
        return Decision(Action.DENY, reason)
    if inp.quota is QuotaState.CLOSED:
        return Decision(Action.DENY, Reason.QUOTA)
    if inp.fail_mode is FailMode.OPEN:
        return Decision(Action.ALLOW, reason, exposure=True)
    return Decision(Action.DEFER, reason, exposure=True)


def decide(inp: DecisionInputs) -> Decision:
    """Allow, deny, defer or scan; see the module docstring for the guarantees."""
    if inp.cached is Cached.INFECTED or inp.scan is ScanResult.INFECTED:
        return Decision(Action.DENY, Reason.INFECTED)
    if inp.tainted and inp.event is Event.OPEN and inp.reading \
            and inp.cached is not Cached.CLEAN and inp.scan is not ScanResult.CLEAN:
        # Found infected, not scanned clean since: whatever the profile, window or
        # appliance say, only a clean scan of the current content lets it be read.
        whole = not inp.oversize or inp.oversize_rule is OversizeRule.SCAN_FIRST
        if inp.scan is ScanResult.NOT_ATTEMPTED and whole and not inp.window \
                and not inp.appliance_down:
            return Decision(Action.SCAN, Reason.NEEDS_SCAN)
        return Decision(Action.DENY, Reason.INFECTED)
    read_only_write = inp.quota is QuotaState.READ_ONLY and (
        inp.event is Event.WRITE or (inp.event is Event.OPEN and inp.writing))
    if not inp.trigger_enabled:
        # Not scanned by this profile, so it adds no scan debt: quota does not apply.
        return Decision(Action.ALLOW, Reason.NOT_TRIGGERED)
    if read_only_write:
        return _DENY_READ_ONLY
    if inp.event is Event.WRITE:
        # Intent before effect: always journaled, whatever the appliance does.
        return Decision(Action.DEFER, Reason.MODIFIED)
    if inp.unflushed and inp.event is Event.OPEN and inp.reading:
        # Content newer than any scan could have seen: the fail mode decides.
        return _no_verdict(inp, Reason.MODIFIED)
    if inp.cached is Cached.CLEAN and not inp.write_pending:
        return Decision(Action.ALLOW, Reason.CACHED)
    if inp.event is Event.OPEN and not inp.reading:
        # A write-only open shows no content: the close scan checks what is written.
        return Decision(Action.ALLOW, Reason.NOT_TRIGGERED)
    if inp.cached is Cached.GRACE and inp.event is Event.OPEN \
            and inp.scan is ScanResult.NOT_ATTEMPTED and not inp.write_pending \
            and inp.quota is QuotaState.NONE:
        # Clean under the previous signatures, within the profile's grace: open at
        # once, journaled so the drain rescans it under the new ones. Whatever the
        # fail mode: the profile opted in (a closed one keeps grace = 0).
        return Decision(Action.DEFER, Reason.GRACE, exposure=True)
    if inp.scan is ScanResult.CLEAN:
        return Decision(Action.ALLOW, Reason.CLEAN)
    if inp.scan is not ScanResult.NOT_ATTEMPTED:
        return _no_verdict(inp, _FAILURE_REASON[inp.scan])
    if inp.oversize and inp.oversize_rule is OversizeRule.DENY:
        # After a write nobody is waiting; the next open denies it, and the
        # entry stays so the drain's policy decides what a big file gets.
        return Decision(Action.DENY if inp.event is Event.OPEN else Action.DEFER,
                        Reason.OVERSIZE)
    if inp.oversize and inp.oversize_rule is OversizeRule.JOURNAL:
        # The administrator's rule for big files; a closed profile still never
        # lets unscanned content through (config refuses that combination anyway).
        return _no_verdict(inp, Reason.OVERSIZE)
    if inp.window:
        return _no_verdict(inp, Reason.WINDOW)
    if inp.appliance_down:
        return _no_verdict(inp, Reason.UNAVAILABLE)
    return Decision(Action.SCAN, Reason.NEEDS_SCAN)
