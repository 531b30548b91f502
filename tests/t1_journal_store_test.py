"""The journal store on a real LMDB environment: group commit, queue, bad input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
import trio

from vfile.journal import (
    Exposure,
    Identity,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalForeign,
    JournalFull,
    JournalTooNew,
    JournalUnreadable,
    QuarantineRecord,
    Reason,
    VerdictRecord,
    keys,
)

ID1 = Identity(1, 10, 100, 1000, 1001)
ID2 = Identity(1, 10, 200, 2000, 2001)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state", clock=clock, max_attempts=3)
    yield j
    j.close()


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.iterdir()) if p.is_file()}


async def test_200_concurrent_defers_are_all_durable(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "s")
    seqs: dict[str, int] = {}

    async def one(i: int) -> None:
        seqs[f"/d/{i}"] = await j.defer(f"/d/{i}", ID1, Reason.UNAVAILABLE, "p")

    async with trio.open_nursery() as n:
        for i in range(250):
            n.start_soon(one, i)
    batches = j.durability()["batches"]
    j.close()
    assert len(set(seqs.values())) == 250
    assert batches < 250  # they were grouped
    j = Journal.open(tmp_path / "s", readonly=True)
    try:
        assert {e.path: e.seq for e in j.list_deferred()} == seqs
    finally:
        j.close()


async def test_same_path_twice_in_one_batch_merges(journal: Journal) -> None:
    seqs: list[int] = []

    async def one(i: int) -> None:
        seqs.append(await journal.defer("/same", ID1, Reason.UNAVAILABLE, "p",
                                        exposure=Exposure(1, i, "x", 1.0)))

    async with trio.open_nursery() as n:
        for i in range(10):
            n.start_soon(one, i)
    (entry,) = journal.list_deferred()
    assert len(set(seqs)) == 10 and entry.seq == max(seqs) and entry.order == min(seqs)
    [x] = entry.exposures  # one (uid, command): one aggregate that counted all ten
    assert x.count == 10


#: another process writes the journal's stored seq counter (meta.seq) with plain LMDB
_BUMP_SEQ = """
import sys, lmdb
from vfile.journal import keys, tables
env = lmdb.open(sys.argv[1], max_dbs=tables.MAX_DBS)
with env.begin(write=True) as txn:
    txn.put(b"seq", keys.u64(int(sys.argv[2])), db=env.open_db(b"meta", txn=txn))
env.close()
"""


async def test_seqs_stay_above_the_stored_counter(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "s")
    try:
        first = await j.defer("/a", ID1, Reason.UNAVAILABLE, "p")
        # Another writer (another process) moved the stored counter on: no seq of ours
        # may fall at or below it, whatever was prepared before.
        with trio.fail_after(60):
            await trio.run_process([sys.executable, "-c", _BUMP_SEQ, str(tmp_path / "s"),
                                    str(first + 1000)])
        later = await j.defer("/b", ID1, Reason.UNAVAILABLE, "p")
        assert later > first + 1000
    finally:
        j.close()
    j = Journal.open(tmp_path / "s")
    try:
        assert await j.defer("/c", ID1, Reason.UNAVAILABLE, "p") > later  # reopened
        assert [e.path for e in j.list_deferred()] == ["/a", "/b", "/c"]
        assert [e.path for e in await j.claim(5, lease=1)] == ["/a", "/b", "/c"]
    finally:
        j.close()


async def test_new_state_dir_is_private(tmp_path: Path) -> None:
    Journal.open(tmp_path / "a" / "b").close()
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["data.mdb", "lock.mdb"]


async def test_redefer_keeps_first_and_bumps_seq(journal: Journal, clock: Clock) -> None:
    s1 = await journal.defer("/f", ID1, Reason.WINDOW, "p",
                             exposure=Exposure(1000, 42, "cat", clock.now))
    clock.now += 5
    for i in range(40):
        clock.now += 1
        s2 = await journal.defer("/f", ID1, Reason.TIMEOUT, "p",
                                 exposure=Exposure(1000 + i % 2, 100 + i, f"vi{i}", clock.now))
    for i in range(3):
        s2 = await journal.defer("/f", ID1, Reason.TIMEOUT, "p",
                                 exposure=Exposure(1001, 200 + i, "vi39", clock.now + i))
    e = journal.get_deferred("/f")
    assert e is not None
    assert s2 > s1 and e.seq == s2 and e.order == s1
    assert e.first_deferred == clock.now - 45 and e.last_deferred == clock.now
    assert e.reason == Reason.TIMEOUT
    # Bounded, the first opener kept, the most recent others kept, repeats counted.
    assert len(e.exposures) == 32
    assert (e.exposures[0].command, e.exposures[0].pid) == ("cat", 42)
    assert e.exposures[1].command == "vi9"
    last = e.exposures[-1]
    assert (last.command, last.count, last.pid) == ("vi39", 4, 202)
    assert last.first == clock.now and last.time == clock.now + 2


async def test_complete_with_stale_seq_keeps_newer_entry(journal: Journal) -> None:
    old = await journal.defer("/f", ID1, Reason.UNAVAILABLE, "p")
    (claimed,) = await journal.claim(1, lease=60)
    assert claimed.seq == old
    new = await journal.defer("/f", ID2, Reason.MODIFIED, "p")
    verdict = VerdictRecord(ID1, "27000", "clean", "", "clamd://x", 1.0)
    assert not await journal.complete("/f", old, verdict)
    entry = journal.get_deferred("/f")
    assert entry is not None and entry.seq == new and entry.lease_until == 0.0
    assert journal.get_verdict(ID1, "27000") == verdict  # still true of the old content
    assert await journal.complete("/f", new, None)
    assert journal.get_deferred("/f") is None


async def test_claim_oldest_first_and_lease(journal: Journal, clock: Clock) -> None:
    for i in range(5):
        await journal.defer(f"/f{i}", ID1, Reason.UNAVAILABLE, "p")
        clock.now += 1
    await journal.defer("/f0", ID1, Reason.UNAVAILABLE, "p")  # re-defer: keeps its place
    first = await journal.claim(2, lease=30)
    assert [e.path for e in first] == ["/f0", "/f1"]
    assert [e.path for e in await journal.claim(10, lease=30)] == ["/f2", "/f3", "/f4"]
    assert await journal.claim(10, lease=30) == []
    clock.now += 31  # leases expire (as after a crash)
    assert len(await journal.claim(10, lease=30)) == 5


async def test_leases_expire_across_reopen(tmp_path: Path, clock: Clock) -> None:
    j = Journal.open(tmp_path / "s", clock=clock)
    await j.defer("/f", ID1, Reason.UNAVAILABLE, "p")
    assert len(await j.claim(1, lease=60)) == 1
    j.close()  # the drain "crashed" holding the lease
    j = Journal.open(tmp_path / "s", clock=clock)
    try:
        assert await j.claim(1, lease=60) == []
        clock.now += 61
        assert [e.path for e in await j.claim(1, lease=60)] == ["/f"]
    finally:
        j.close()


async def test_a_new_run_ends_the_leases_of_the_runs_before(tmp_path: Path,
                                                            clock: Clock) -> None:
    """A mount's run (begin_run): the drain of the run before is gone, its leases over
    (r27: they held entries unscanned for the whole lease after a restart); this run's
    own leases hold as before, even one granted the moment the run began."""
    j = Journal.open(tmp_path / "s", clock=clock)
    for p in ("/f", "/g"):
        await j.defer(p, ID1, Reason.UNAVAILABLE, "p")
    assert len(await j.claim(1, lease=60)) == 1
    await j.begin_run(b"src")
    j.close()  # stopped holding the lease
    clock.now += 1
    j = Journal.open(tmp_path / "s", clock=clock)
    try:
        await j.begin_run(b"src")
        assert [e.path for e in await j.claim(1, lease=60)] == ["/f"]  # not waited out
        assert [e.path for e in await j.claim(5, lease=60)] == ["/g"]
        assert await j.claim(5, lease=60) == []  # this run's leases hold
        clock.now += 61
        assert len(await j.claim(5, lease=60)) == 2  # and expire as ever
    finally:
        j.close()


async def test_leases_granted_under_a_clock_ahead_are_over(tmp_path: Path,
                                                          clock: Clock) -> None:
    """A run whose clock was two hours fast (stepped back since) left leases ending two
    hours past any this run grants: over, not waited out (a28); a step back within this
    run of less than a second keeps its own leases."""
    j = Journal.open(tmp_path / "s", clock=clock)
    for p in ("/f", "/g"):
        await j.defer(p, ID1, Reason.UNAVAILABLE, "p")
    clock.now += 7200
    assert len(await j.claim(1, lease=60)) == 1
    j.close()
    clock.now -= 7200  # the clock stepped back, then the next run
    j = Journal.open(tmp_path / "s", clock=clock)
    try:
        await j.begin_run(b"src")
        assert [e.path for e in await j.claim(1, lease=60)] == ["/f"]  # not waited out
        clock.now += 10
        assert [e.path for e in await j.claim(5, lease=60)] == ["/g"]
        clock.now -= 0.5  # a small step back: this run's leases hold
        assert await j.claim(5, lease=60) == []
    finally:
        j.close()


async def test_release_backs_off_then_poisons(journal: Journal, clock: Clock) -> None:
    seq = await journal.defer("/f", ID1, Reason.UNAVAILABLE, "p")
    await journal.defer("/g", ID1, Reason.UNAVAILABLE, "p")
    for attempt in (1, 2, 3):
        claimed = [e for e in await journal.claim(5, lease=10) if e.path == "/f"]
        assert claimed, f"attempt {attempt}"
        await journal.release("/f", seq, f"boom {attempt}")
        e = journal.get_deferred("/f")
        assert e is not None and e.attempts == attempt and e.last_error == f"boom {attempt}"
        if attempt < 3:
            assert e.not_before > clock.now and not e.poisoned
            assert [x.path for x in await journal.claim(5, lease=10)] == []  # /g leased
            clock.now = e.not_before + 11
    e = journal.get_deferred("/f")
    assert e is not None and e.poisoned
    clock.now += 10**6
    assert [x.path for x in await journal.claim(5, lease=10)] == ["/g"]
    assert journal.contents()["poisoned"] == 1
    assert [x.path for x in journal.list_deferred(include_poisoned=False)] == ["/g"]
    assert {x.path for x in journal.list_deferred()} == {"/f", "/g"}
    assert await journal.retry("/f") == 1
    assert journal.contents()["poisoned"] == 0
    clock.now += 100
    assert [x.path for x in await journal.claim(5, lease=10)] == ["/f", "/g"]


async def test_new_identity_unpoisons(journal: Journal) -> None:
    seq = await journal.defer("/f", ID1, Reason.UNAVAILABLE, "p")
    for _ in range(3):
        await journal.release("/f", seq, "x")
    assert journal.get_deferred("/f").poisoned  # type: ignore[union-attr]
    await journal.defer("/f", ID2, Reason.MODIFIED, "p")
    e = journal.get_deferred("/f")
    assert e is not None and not e.poisoned and e.attempts == 0
    assert [x.path for x in await journal.claim(1, lease=1)] == ["/f"]


async def test_purge_and_retry_all(journal: Journal) -> None:
    for i in range(4):
        seq = await journal.defer(f"/f{i}", ID1, Reason.UNAVAILABLE, "p")
        if i % 2:
            for _ in range(3):
                await journal.release(f"/f{i}", seq, "x")
    assert await journal.purge(poisoned_only=True) == 2
    assert [e.path for e in journal.list_deferred()] == ["/f0", "/f2"]
    assert await journal.purge("/f0") == 1
    assert await journal.purge("/nothing") == 0
    assert await journal.retry() == 0
    assert await journal.purge() == 1
    assert journal.contents()["deferred"] == 0


async def test_rename_and_forget(journal: Journal) -> None:
    await journal.defer("/a", ID1, Reason.UNAVAILABLE, "p")
    await journal.defer("/b", ID2, Reason.UNAVAILABLE, "p")
    await journal.rename_path("/a", "/b")  # /a overwrites /b
    assert journal.get_deferred("/a") is None
    b = journal.get_deferred("/b")
    assert b is not None and b.identity == ID1
    await journal.defer("/dir/x/1", ID1, Reason.UNAVAILABLE, "p")
    await journal.defer("/dir/y", ID1, Reason.UNAVAILABLE, "p")
    await journal.defer("/dirx", ID1, Reason.UNAVAILABLE, "p")
    assert await journal.rename_tree("/dir", "/new") == 2
    assert {e.path for e in journal.list_deferred()} == {"/b", "/new/x/1", "/new/y", "/dirx"}
    await journal.forget_path("/b")
    assert journal.get_deferred("/b") is None
    assert len(await journal.claim(10, lease=1)) == 3  # index kept in step


async def test_hash_collisions(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "path_hash", lambda path: b"\0" * 8)
    seqs = {p: await journal.defer(p, ID1, Reason.UNAVAILABLE, "p") for p in ("/a", "/b", "/c")}
    assert {p: journal.get_deferred(p).seq for p in seqs} == seqs  # type: ignore[union-attr]
    assert await journal.complete("/b", seqs["/b"], None)
    assert journal.get_deferred("/b") is None
    await journal.defer("/d", ID1, Reason.UNAVAILABLE, "p")  # reuses /b's free slot
    assert {e.path for e in journal.list_deferred()} == {"/a", "/c", "/d"}
    await journal.rename_path("/a", "/c")
    assert {e.path for e in journal.list_deferred()} == {"/c", "/d"}


async def test_long_and_undecodable_paths(journal: Journal) -> None:
    long_path = "/" + "x" * 4000
    odd = os.fsdecode(b"/caf\xe9")
    await journal.defer(long_path, None, Reason.OVERSIZE, "p")
    await journal.defer(odd, None, Reason.ERROR, "p")
    assert journal.get_deferred(long_path) is not None
    assert journal.get_deferred(odd) is not None


async def test_verdicts_and_quarantine(journal: Journal) -> None:
    v = VerdictRecord(ID1, "27000", "infected", "Eicar-Test-Signature", "builtin", 5.0)
    await journal.put_verdict(v)
    assert journal.get_verdict(ID1, "27000") == v
    assert journal.get_verdict(ID1, "27001") is None
    assert journal.get_verdict(ID2, "27000") is None
    q = QuarantineRecord("q1", "/src/a", "/q/q1", "Eicar", 5.0, ID1, "p")
    await journal.add_quarantine(q)
    assert journal.list_quarantine() == [q] and journal.get_quarantine("q1") == q
    await journal.remove_quarantine("q1")
    assert journal.get_quarantine("q1") is None
    stats = journal.contents()
    assert stats["verdicts"] == 1 and stats["quarantined"] == 0


async def test_a_new_verdict_drops_the_files_older_versions(journal: Journal) -> None:
    # Issue 19: one record per write made the table (and the mapped file) grow forever.
    other_file = VerdictRecord(Identity(1, 11, 5, 5, 5), "27000", "clean", "", "b", 1.0)
    await journal.put_verdict(other_file)
    for n in range(100):
        await journal.put_verdict(VerdictRecord(Identity(1, 10, n, 1000 + n, 1000 + n),
                                                "27000", "clean", "", "builtin", 1.0))
    assert journal.contents()["verdicts"] == 2
    newest = Identity(1, 10, 99, 1099, 1099)
    assert journal.get_verdict(newest, "27000") is not None
    assert journal.get_verdict(Identity(1, 10, 98, 1098, 1098), "27000") is None
    assert journal.get_verdict(other_file.identity, "27000") == other_file
    # The same version under another signature version stays (a pool of appliances
    # at different versions), and so does a newer version when an older one lands late.
    await journal.put_verdict(VerdictRecord(newest, "27001", "clean", "", "clamd", 2.0))
    late = VerdictRecord(Identity(1, 10, 7, 1007, 1007), "27000", "clean", "", "b", 3.0)
    await journal.put_verdict(late)
    assert journal.get_verdict(newest, "27000") is not None
    assert journal.get_verdict(newest, "27001") is not None
    assert journal.contents()["verdicts"] == 4
    # complete() stores its verdict the same way.
    seq = await journal.defer("/a", newest, Reason.MODIFIED, "p")
    final = VerdictRecord(Identity(1, 10, 1, 2000, 2000), "27000", "clean", "", "b", 4.0)
    assert await journal.complete("/a", seq, final)
    assert journal.contents()["verdicts"] == 2
    assert journal.get_verdict(final.identity, "27000") == final


async def test_map_grows(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "s", map_size=64 << 10, sync=False)
    try:
        async with trio.open_nursery() as n:
            for i in range(2000):
                n.start_soon(j.defer, f"/grow/{i}", ID1, Reason.UNAVAILABLE, "p" * 100)
        stats = j.contents()
        assert stats["deferred"] == 2000
        assert int(stats["map_size"]) > 64 << 10  # type: ignore[call-overload]
    finally:
        j.close()


async def test_cancelled_waiters_do_not_lose_others(journal: Journal) -> None:
    done: list[str] = []

    async def keep(i: int) -> None:
        await journal.defer(f"/keep/{i}", ID1, Reason.UNAVAILABLE, "p")
        done.append(f"/keep/{i}")

    async def cancelled(i: int) -> None:
        with trio.move_on_after(0):  # cancelled at its first checkpoint, while waiting
            await journal.defer(f"/gone/{i}", ID1, Reason.UNAVAILABLE, "p")

    async with trio.open_nursery() as n:
        for i in range(100):
            n.start_soon(keep, i)
            n.start_soon(cancelled, i)
        with trio.move_on_after(0):
            await journal.defer("/cancelled-leader", ID1, Reason.UNAVAILABLE, "p")
        for i in range(50):
            with trio.move_on_after(0.0001 * i):
                await journal.defer(f"/maybe/{i}", ID1, Reason.UNAVAILABLE, "p")
    assert len(done) == 100
    paths = {e.path for e in journal.list_deferred()}
    assert all(p in paths for p in done)
    # The committer is still usable: nobody was left holding leadership.
    with trio.fail_after(10):
        await journal.defer("/after", ID1, Reason.UNAVAILABLE, "p")


async def test_failed_batch_fails_every_caller(journal: Journal) -> None:
    committer = journal._committer
    errors: list[BaseException] = []

    def bad(txn: object) -> None:
        raise lmdb.Error("simulated")

    async def call(fn: object) -> None:
        try:
            await committer.submit(fn)  # type: ignore[arg-type]
        except JournalError as err:
            errors.append(err)

    async with trio.open_nursery() as n:
        n.start_soon(call, lambda txn: None)
        n.start_soon(call, bad)
        n.start_soon(call, lambda txn: None)
    assert len(errors) >= 2  # the bad op and whoever shared its batch
    await journal.defer("/still-works", ID1, Reason.UNAVAILABLE, "p")


# --- bad input: refuse clearly, change nothing ----------------------------------------------

def _make_journal(d: Path) -> None:
    Journal.open(d).close()


def test_corrupt_file(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "data.mdb").write_bytes(os.urandom(64 << 10))
    before = _digest(d)
    with pytest.raises(JournalCorrupt, match=str(d)):
        Journal.open(d)
    assert _digest(d) == before


def test_foreign_lmdb(tmp_path: Path) -> None:
    d = tmp_path / "s"
    env = lmdb.open(str(d), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"hello", b"world")
    env.close()
    before = _digest(d)
    with pytest.raises(JournalForeign, match="not a vfile journal"):
        Journal.open(d)
    assert _digest(d) == before


def test_newer_format(tmp_path: Path) -> None:
    d = tmp_path / "s"
    _make_journal(d)
    env = lmdb.open(str(d), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    before = _digest(d)
    with pytest.raises(JournalTooNew, match="99"):
        Journal.open(d)
    assert _digest(d) == before


def test_unreadable(tmp_path: Path) -> None:
    d = tmp_path / "s"
    _make_journal(d)
    os.chmod(d / "data.mdb", 0o000)
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    # Without the capabilities that let root read anything (a no-op for other users).
    code = ("import sys; from journal import Journal, JournalUnreadable\n"
            "try:\n    Journal.open(sys.argv[1])\nexcept JournalUnreadable as e:\n"
            "    print('UNREADABLE', e)\n")
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    out = subprocess.run([*drop, sys.executable, "-c", code, str(d)], capture_output=True,
                         text=True, check=False, cwd=Path(__file__).parent.parent,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.stdout.startswith("UNREADABLE"), out.stdout + out.stderr
    assert str(d) in out.stdout
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before


def test_readonly_missing(tmp_path: Path) -> None:
    with pytest.raises(JournalUnreadable):
        Journal.open(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (the tests run as root, as the mount does)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        # Lazy: a failed test may still hold the environment open; never leave it mounted.
        subprocess.run(["umount", "-l", str(mnt)], check=True)


async def test_disk_full(small_fs: Path) -> None:
    j = Journal.open(small_fs / "s", map_size=8 << 20)
    acked: list[str] = []
    try:
        with pytest.raises(JournalFull, match="disk full"):
            for i in range(10_000):
                await j.defer(f"/full/{i}" + "x" * 200, ID1, Reason.UNAVAILABLE, "p")
                acked.append(f"/full/{i}" + "x" * 200)
    finally:
        j.close()
    assert acked
    j = Journal.open(small_fs / "s", readonly=True)  # opens cleanly: nothing corrupted
    try:
        paths = {e.path for e in j.list_deferred()}
        assert set(acked) <= paths
    finally:
        j.close()


async def test_exposures_are_kept_when_their_entry_ends_unverified(journal: Journal) -> None:
    reader = Exposure(1001, 7, "cat", 5.0)
    writer = Exposure(1000, 8, "cp", 4.0, wrote=True)
    await journal.defer("/gone", ID1, Reason.UNAVAILABLE, "p", exposure=reader)
    await journal.defer("/tmp", None, Reason.MODIFIED, "p", exposure=writer)
    clean = await journal.defer("/clean", ID1, Reason.UNAVAILABLE, "p", exposure=reader)
    bad = await journal.defer("/bad", ID1, Reason.MODIFIED, "p", exposure=writer)
    await journal.forget_path("/gone")
    await journal.forget_path("/tmp")  # only its writer opened it: nothing to keep
    await journal.complete("/clean", clean,
                           VerdictRecord(ID1, "sig", "clean", "", "a", 1.0))  # what they read
    await journal.complete("/bad", bad, VerdictRecord(ID1, "sig", "infected", "Eicar", "a", 1.0))
    kept = {r.path: r for r in journal.list_exposed()}
    assert set(kept) == {"/gone", "/bad"}
    assert kept["/gone"].outcome == "unlinked" and kept["/gone"].exposures == (reader,)
    assert (kept["/bad"].outcome, kept["/bad"].detail) == ("infected", "Eicar")
    assert journal.contents()["exposure_records"] == 2
    assert await journal.clear_exposed("/gone") == 1
    assert await journal.clear_exposed() == 1
    assert journal.list_exposed() == []


# --- names: relink and exchange (issue 13) ------------------------------------------------------


async def test_relink_moves_or_merges_and_exchange_swaps_files_and_trees(tmp_path: Path) -> None:
    from vfile.journal.records import Exposure
    from vfile.journal.records import Reason as R

    j = Journal.open(tmp_path / "j")
    try:
        who = Exposure(uid=1, pid=2, command="cat", time=1.0)
        await j.defer("a", None, R.MODIFIED, "p", exposure=who)
        seq = await j.relink_path("a", "b")
        entry = j.get_deferred("b")
        assert j.get_deferred("a") is None and entry is not None and entry.seq == seq
        assert entry.exposures == (who,)
        other = Exposure(uid=3, pid=4, command="head", time=2.0)
        await j.defer("c", None, R.MODIFIED, "p", exposure=other)
        await j.relink_path("b", "c")  # merged into c's own entry, exposures of both
        merged = j.get_deferred("c")
        assert merged is not None and set(merged.exposures) == {who, other}
        assert await j.relink_path("nothing", "c") is None
        for path in ("x", "y", "d1/f", "d1/sub/g", "d2/h", "d10/k"):
            await j.defer(path, None, R.MODIFIED, path)
        before = {e.path: e.seq for e in j.list_deferred()}
        assert await j.exchange("x", "y") == 2
        assert await j.exchange("d1", "d2") == 3
        after = {e.path: (e.profile, e.seq) for e in j.list_deferred()}
        assert after["y"] == ("x", before["x"]) and after["x"] == ("y", before["y"])
        assert after["d2/f"][0] == "d1/f" and after["d2/sub/g"][0] == "d1/sub/g"
        assert after["d1/h"][0] == "d2/h"
        assert after["d10/k"][0] == "d10/k"  # a sibling with a common prefix stays
    finally:
        j.close()
