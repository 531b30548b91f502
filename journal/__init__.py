"""Durable state on LMDB: deferred scans, verdicts, quarantine records. A leaf
package: imports neither `vfile` nor `scanner`.

Public API: `Journal` (store.py) and the records and errors of records.py.
"""

from vfile.journal.records import (
    DeferredEntry,
    Exposure,
    Identity,
    JournalCorrupt,
    JournalError,
    JournalForeign,
    JournalFull,
    JournalTooNew,
    JournalUnreadable,
    QuarantineRecord,
    Reason,
    VerdictRecord,
)
from vfile.journal.store import Journal

__all__ = ["DeferredEntry", "Exposure", "Identity", "Journal", "JournalCorrupt", "JournalError",
           "JournalForeign", "JournalFull", "JournalTooNew", "JournalUnreadable",
           "QuarantineRecord", "Reason", "VerdictRecord"]
