"""What a verdict covered, and which rules it may answer.

A file over a profile's `max_size` is scanned only up to `scan_first` bytes
when its rule is `scan-first`. Such a verdict is about a prefix: it is stored
with the bytes it covered (`VerdictRecord.covered`, -1 for the whole file) and
admits the file only under a rule that asked for no more than that prefix.
An infected verdict is about the file whatever it covered. Pure.
"""

from __future__ import annotations

from vfile.config.model import OversizeRule, Profile
from vfile.journal.records import VerdictOutcome, VerdictRecord

#: `VerdictRecord.covered` of a verdict on the whole file
WHOLE = -1


def covered_by(limit: int | None, size: int) -> int:
    """What a scan with `limit` (None: no limit) of a file of `size` bytes covered."""
    return WHOLE if limit is None or limit >= size else limit


def is_whole(rec: VerdictRecord) -> bool:
    return rec.covered == WHOLE or rec.covered >= rec.identity.size


def admits(rec: VerdictRecord, profile: Profile) -> bool:
    """May `rec` answer for its file under `profile`? An infected verdict always
    may; a clean one on a prefix only under `scan-first` asking for at most it."""
    if rec.outcome == VerdictOutcome.INFECTED or is_whole(rec):
        return True
    size = rec.identity.size
    return (profile.oversize is OversizeRule.SCAN_FIRST and profile.is_oversize(size)
            and rec.covered >= min(profile.scan_first, size))


def unscannable(profile: Profile, size: int) -> str:
    """Why the drain must not scan a file of `size` under `profile` (its oversize rule
    asks for the whole file, which is over the limit), or "" if it may."""
    if not profile.is_oversize(size) or profile.oversize is OversizeRule.SCAN_FIRST:
        return ""
    return (f"larger than max_size {profile.max_size} (oversize = {profile.oversize.value}): "
            "not scanned")
