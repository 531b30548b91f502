"""Durable state on LMDB: deferred scans, verdicts, quarantine records. A leaf
package: imports neither `vfile` nor `scanner`.

Public API: `Journal` (store.py) and the records and errors of records.py.
Inside: environment.py opens, checks and creates the LMDB environment;
commit.py group-commits writes; tables.py lays out the tables and keeps
deferred entries by path with their indexes and counters; the operations of
one transaction are ops.py (deferred entries, quarantine), verdicts.py,
exposed.py, queue.py (the drain's claims), names.py (relink, exchange) and
taint.py; reads.py builds the reports that read many records, check.py checks
the invariants (`Journal.check`).
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
