"""The gate's verdict cache (vfile.filter.verdicts): one entry per file, LRU-bounded, measured."""

from __future__ import annotations

import os
import stat
import tracemalloc

import pytest

from vfile.filter.verdicts import VerdictCache
from vfile.journal.records import Identity, VerdictRecord
from vfile.passthrough.inodes import ROOT_INODE, InodeTable

#: the bound the README states per cached verdict
BYTES_PER_VERDICT = 1024


def rec(ino: int, version: int, sig: str = "27000", outcome: str = "clean") -> VerdictRecord:
    # Real stat values are large ints (nanosecond times), as in a mount.
    t = 1_700_000_000_000_000_000 + version
    sig = "".join(sig)  # a string of its own, as parsed from each appliance reply
    return VerdictRecord(Identity(2049, ino, 4096 + version, t, t), sig, outcome, "",
                         "clamd:///run/clamav/clamd.ctl", 1_700_000_000.0 + version)


def test_rewrites_of_one_file_keep_one_entry() -> None:
    cache = VerdictCache(100)
    for v in range(1000):
        cache.put(rec(7, v))
    assert len(cache) == 1
    assert cache.get(rec(7, 999).identity, "27000") == rec(7, 999)
    assert cache.get(rec(7, 998).identity, "27000") is None


def test_get_needs_the_exact_identity_and_signature() -> None:
    cache = VerdictCache(100)
    cache.put(rec(7, 1))
    i = rec(7, 1).identity
    assert cache.get(i, "27001") is None
    for changed in (Identity(i.dev, i.ino, i.size + 1, i.mtime_ns, i.ctime_ns),
                    Identity(i.dev, i.ino, i.size, i.mtime_ns + 1, i.ctime_ns),
                    Identity(i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns + 1),
                    Identity(i.dev + 1, i.ino, i.size, i.mtime_ns, i.ctime_ns)):
        assert cache.get(changed, "27000") is None


def test_get_stat_matches_like_get() -> None:
    cache = VerdictCache(10)
    cache.put(rec(7, 1))
    i = rec(7, 1).identity
    st = os.stat_result((0o100644, i.ino, i.dev, 1, 0, 0, i.size, 0, 0, 0,
                         0.0, 0.0, 0.0, 0, i.mtime_ns, i.ctime_ns))
    assert cache.get_stat(st, "27000") == rec(7, 1)
    assert cache.get_stat(st, "other") is None
    newer = os.stat_result((0o100644, i.ino, i.dev, 1, 0, 0, i.size, 0, 0, 0,
                            0.0, 0.0, 0.0, 0, i.mtime_ns, i.ctime_ns + 1))
    assert cache.get_stat(newer, "27000") is None


def test_a_late_older_verdict_does_not_replace_a_newer_one() -> None:
    cache = VerdictCache(10)
    cache.put(rec(7, 5))
    cache.put(rec(7, 4))  # a slow scan of the version before
    assert cache.get(rec(7, 5).identity, "27000") == rec(7, 5)
    cache.put(rec(7, 5, sig="27001"))  # another appliance's signature version: kept too
    assert cache.get(rec(7, 5).identity, "27000") == rec(7, 5)
    assert cache.get(rec(7, 5).identity, "27001") == rec(7, 5, sig="27001")
    cache.put(rec(7, 6, sig="27001"))  # a new version drops every verdict of the old one
    assert cache.get(rec(7, 5).identity, "27000") is None
    assert cache.get(rec(7, 6).identity, "27001") is not None
    for n in range(10):  # at most MAX_SIGS_PER_FILE signature versions per file
        cache.put(rec(7, 6, sig=f"s{n}"))
    assert sum(cache.get(rec(7, 6).identity, f"s{n}") is not None for n in range(10)) == 4
    assert len(cache) == 1


def test_drop_file_forgets_every_verdict_of_the_file() -> None:
    cache = VerdictCache(10)
    cache.put(rec(7, 1))
    cache.put(rec(7, 1, sig="27001"))
    cache.put(rec(8, 1))
    cache.drop_file((2049, 7))
    cache.drop_file((2049, 99))  # unknown: nothing happens
    assert len(cache) == 1
    assert cache.get(rec(7, 1).identity, "27000") is None
    assert cache.get(rec(8, 1).identity, "27000") is not None


def test_least_recently_used_goes_first() -> None:
    cache = VerdictCache(3)
    for ino in (1, 2, 3):
        cache.put(rec(ino, 0))
    assert cache.get(rec(1, 0).identity, "27000") is not None  # 1 is now the newest
    cache.put(rec(4, 0))
    assert len(cache) == 3
    assert cache.get(rec(2, 0).identity, "27000") is None
    assert all(cache.get(rec(n, 0).identity, "27000") is not None for n in (1, 3, 4))
    with pytest.raises(ValueError):
        VerdictCache(0)


def test_memory_per_cached_verdict_is_bounded() -> None:
    """The README's figure: what one cached verdict costs, record and key included."""
    n = 20_000
    records = [rec(ino, 1) for ino in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = VerdictCache(n)
        for r in records:
            cache.put(r)
        cache_only = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del records
    # The records were built before tracing: count them too, as a mount holds them.
    per_record = _record_bytes()
    per_entry = cache_only / n + per_record
    print(f"cache structure {cache_only / n:.0f} B + record {per_record:.0f} B "
          f"= {per_entry:.0f} B per cached verdict")
    assert len(cache) == n
    assert per_entry < BYTES_PER_VERDICT


def _record_bytes() -> float:
    n = 5_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [rec(ino, 1) for ino in range(n)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == n
    return used / n - 8  # minus the list slot


def test_the_inode_table_reports_each_file_the_kernel_forgot() -> None:
    """What lets the mount drop a deleted file's verdicts (vfile/passthrough/opsbase.py wires
    `on_drop` to the gate's `forget_file`)."""
    def st(ino: int, mode: int = stat.S_IFREG | 0o644) -> os.stat_result:
        return os.stat_result((mode, ino, 1, 1, 0, 0, 0, 0, 0, 0))

    dropped: list[tuple[int, int]] = []
    table = InodeTable(100, st(2, stat.S_IFDIR), close=lambda fd: None)
    table.on_drop = dropped.append
    a, b = table.add(st(5), 105), table.add(st(6), 106)
    a.lookups, b.lookups, b.opens = 2, 1, 1
    table.forget(a.ino, 1)
    assert dropped == []
    table.forget(a.ino, 1)
    assert dropped == [(1, 5)]
    table.forget(b.ino, 1)  # still open: kept until the last close
    assert dropped == [(1, 5)]
    b.opens = 0
    table.maybe_drop(b)
    assert dropped == [(1, 5), (1, 6)]
    table.forget(ROOT_INODE, 5)
    table.close_all()  # the unmount: nothing to tell
    assert dropped == [(1, 5), (1, 6)]
