"""The gate's in-memory verdict cache: an LRU with one entry per file, not per version.

A verdict is valid for one identity (dev, ino, size, mtime_ns, ctime_ns) at
one signature version. Every write gives a file a new identity, and a ctime
never goes back, so once a file has a verdict for a newer identity the old
one can never match again. Keying the cache by the identity itself (as it
was) kept every superseded version until the LRU pushed it out: a mount
with a few busy files filled all 65,536 slots at one entry per write
(issue 19). Keyed by file (dev, ino), the cache holds the verdicts of each
file's current version only (one per signature version), and the mount
drops a file's entry when the kernel forgets the inode (`drop_file`: a
deleted file's verdicts are dead; a live file's stay in the journal), so its
size follows the files the kernel knows, and `size` caps even that.

Invariants:
- `get` returns a record only for exactly the identity and signature asked
  for; anything else is a miss (the journal is asked next).
- `put` never replaces a record with one for an older ctime: a slow scan of a
  superseded version finishing last does not evict the current verdict.
- At most `size` files and `MAX_SIGS_PER_FILE` verdicts per file; the least
  recently used file goes first.

Memory: about 0.5 KiB per cached file with one verdict on CPython 3.11
(measured with tracemalloc in tests/t0_verdict_cache_test.py: the record,
its identity and their ints, the key, the tuple and the ordered-dict link).
"""

from __future__ import annotations

import collections
import os

from vfile.journal.records import Identity, VerdictRecord

#: (st_dev, st_ino)
Key = tuple[int, int]
#: verdicts kept per file for different signature versions (a pool of appliances
#: at different versions); the most recently stored win
MAX_SIGS_PER_FILE = 4


class VerdictCache:
    """Verdicts by file, least recently used file evicted first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the verdict cache needs room for at least one file")
        self.size = size
        self._d: collections.OrderedDict[Key, tuple[VerdictRecord, ...]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        """Files with a cached verdict."""
        return len(self._d)

    def get(self, identity: Identity, sig: str) -> VerdictRecord | None:
        key = (identity.dev, identity.ino)
        for rec in self._d.get(key, ()):
            if rec.sig_version == sig and rec.identity == identity:
                self._d.move_to_end(key)
                return rec
        return None

    def get_stat(self, st: os.stat_result, sig: str) -> VerdictRecord | None:
        """`get` for a stat result, without building an Identity (the warm open path)."""
        key = (st.st_dev, st.st_ino)
        for rec in self._d.get(key, ()):
            i = rec.identity
            if (rec.sig_version == sig and i.ctime_ns == st.st_ctime_ns
                    and i.mtime_ns == st.st_mtime_ns and i.size == st.st_size):
                self._d.move_to_end(key)
                return rec
        return None

    def put(self, rec: VerdictRecord) -> None:
        i = rec.identity
        key = (i.dev, i.ino)
        old = self._d.get(key, ())
        if any(o.identity.ctime_ns > i.ctime_ns for o in old):
            return  # the file has changed since: this verdict can never match again
        keep = [o for o in old if o.identity.ctime_ns == i.ctime_ns
                and (o.sig_version, o.identity) != (rec.sig_version, i)]
        self._d[key] = (rec, *keep[:MAX_SIGS_PER_FILE - 1])
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def drop_file(self, key: Key) -> None:
        """Forget a file's verdicts (the kernel forgot the inode: deleted, or evicted
        from its cache; the journal still has the verdicts of a file that exists)."""
        self._d.pop(key, None)
