"""`Journal.complete_many` (the drain's batch of completions): each item settles exactly
as `complete` would have, in one operation of one transaction; and claims pass leased
entries on their quick look (`records.surely_unclaimable`) without changing who gets what."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfile.journal import records
from vfile.journal.records import (
    Exposure,
    Identity,
    Reason,
    VerdictOutcome,
    VerdictRecord,
)
from vfile.journal.store import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state", sync=False)
    try:
        yield j
    finally:
        j.close()


def _ident(i: int) -> Identity:
    return Identity(1, i, 100 + i, 1000 + i, 2000 + i)


def _clean(identity: Identity) -> VerdictRecord:
    return VerdictRecord(identity, "sig1", VerdictOutcome.CLEAN, "", "clamd", 1.0)


async def _defer(journal: Journal, i: int) -> int:
    return await journal.defer(f"d/f{i}", _ident(i), Reason.WINDOW, "default",
                               exposure=Exposure(0, 10, "cat", 1.0), durable=False)


async def test_each_item_settles_as_complete_would(journal: Journal) -> None:
    for i in range(4):
        await _defer(journal, i)
    claimed = {e.path: e for e in await journal.claim(10, lease=60)}
    assert len(claimed) == 4
    await _defer(journal, 1)  # re-deferred while scanned: its claim's seq is stale
    ops_before = journal.durability()["ops"]
    done = await journal.complete_many([
        ("d/f0", claimed["d/f0"].seq, _clean(_ident(0))),
        ("d/f1", claimed["d/f1"].seq, _clean(_ident(1))),
        ("d/f2", claimed["d/f2"].seq, None),  # gone
        ("d/missing", 99, _clean(_ident(9))),
    ])
    assert done == [True, False, True, False]
    assert journal.durability()["ops"] == ops_before + 1
    left = {e.path: e for e in journal.list_deferred()}
    assert set(left) == {"d/f1", "d/f3"}
    assert left["d/f1"].lease_until == 0.0  # claimable again at once, as with `complete`
    assert left["d/f3"].lease_until > 0  # untouched: still leased
    for i in (0, 1, 9):  # verdicts stored whether or not an entry was removed
        assert journal.get_verdict(_ident(i), "sig1") == _clean(_ident(i))
    assert journal.check() == []
    # Gone: its exposures are kept (what `complete` with no verdict does).
    assert [r.path for r in journal.list_exposed()] == ["d/f2"]


async def test_claims_pass_leased_entries_and_take_the_next_oldest(journal: Journal) -> None:
    for i in range(10):
        await _defer(journal, i)
    first = [e.path for e in await journal.claim(3, lease=60)]
    second = [e.path for e in await journal.claim(3, lease=60)]
    await journal.release("d/f3", journal.get_deferred("d/f3").seq, "busy")  # backing off
    third = [e.path for e in await journal.claim(10, lease=60)]
    assert first == ["d/f0", "d/f1", "d/f2"]
    assert second == ["d/f3", "d/f4", "d/f5"]
    assert third == ["d/f6", "d/f7", "d/f8", "d/f9"]
    assert journal.check() == []


async def test_a_batch_keeps_every_profiles_counters(journal: Journal) -> None:
    """One counter update per profile for the batch (`tables.apply_tally`), the same
    counts as one per entry: `check` compares them with the entries."""
    for i in range(6):
        await journal.defer(f"d/f{i}", _ident(i), Reason.WINDOW, "a" if i % 2 else "b",
                            durable=False)
    claimed = await journal.claim(10, lease=60)
    done = await journal.complete_many([(e.path, e.seq, _clean(e.identity or _ident(0)))
                                        for e in claimed[:5]])
    assert done == [True] * 5
    assert [e.path for e in journal.list_deferred()] == ["d/f5"]
    assert journal.check() == []


async def test_a_claimed_entry_is_not_decoded_again(journal: Journal,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The completion of an entry as its claim stored it takes the claim's entry
    (`records.remember_deferred`); one changed since (re-deferred) is decoded."""
    for i in range(4):
        await _defer(journal, i)
    claimed = await journal.claim(10, lease=60)
    for entry in claimed:  # what the memo hands back is what the decoder would
        raw = records.encode_deferred(entry)
        assert records._unpack(raw, "deferred", 14)[1] == entry.seq
    await _defer(journal, 1)  # re-deferred: new bytes, decoded as usual
    unpacked: list[str] = []
    unpack = records._unpack

    def counting(data: bytes, kind: str, length: int) -> list[object]:
        unpacked.append(kind)
        return unpack(data, kind, length)

    monkeypatch.setattr(records, "_unpack", counting)
    done = await journal.complete_many([(e.path, e.seq, _clean(_ident(i)))
                                        for i, e in enumerate(claimed)])
    assert done == [True, False, True, True]
    assert unpacked.count("deferred") == 1  # d/f1 only
    assert [e.path for e in journal.list_deferred()] == ["d/f1"]
    assert journal.get_deferred("d/f1").lease_until == 0.0
    assert journal.check() == []


def test_the_memo_gives_what_decoding_gives() -> None:
    rng = random.Random(7)
    for i in range(200):
        entry = records.DeferredEntry(
            f"d/ü{i}\udcff", rng.randrange(1 << 40), _ident(i) if i % 3 else None,
            Reason.WINDOW, "default", rng.random() * 1e9, rng.random() * 1e9,
            rng.randrange(5), "err" * (i % 2),
            (Exposure(0, i, "cat", rng.random() * 1e9),) * (i % 2), rng.random() * 1e9,
            rng.random() * 1e9, False, i)
        raw = records.encode_deferred(entry)
        records.remember_deferred(raw, entry)
        assert records.decode_deferred(raw) is entry
        assert records.decode_deferred(raw) == entry  # forgotten: decoded, and equal


def test_a_lease_spliced_in_is_the_entry_encoded() -> None:
    """A claim writes the lease into the stored bytes (`records.encode_leased`) rather than
    re-encoding the entry: byte for byte what encoding the leased entry gives."""
    rng = random.Random(11)
    for i in range(300):
        entry = records.DeferredEntry(
            f"d/f,{i}]\"", rng.randrange(1 << 50), _ident(i) if i % 4 else None,
            Reason.WINDOW, "p,1", rng.random() * 1e9, rng.random() * 1e9, rng.randrange(5),
            "e,rr" * (i % 2), (Exposure(0, i, "c,at", rng.random() * 1e9),) * (i % 3),
            rng.choice([0.0, rng.random() * 1e9, 1e16, 0.1]), rng.choice([0.0, 5.5]),
            False, i)
        until = rng.choice([rng.random() * 2e9, 1.0, 1e16, 1234567890.0])
        lent = records.leased(entry, until)
        spliced = records.encode_leased(records.encode_deferred(entry), lent)
        assert spliced == records.encode_deferred(lent)
        assert records.decode_deferred(spliced) == lent


def test_the_memo_stays_bounded_while_other_threads_take_from_it() -> None:
    entries = [records.DeferredEntry(f"d/f{i}", i, _ident(i), Reason.WINDOW, "default",
                                     1.0, 1.0, 0, "", (), 0.0, 5.0, False, i)
               for i in range(records.RECENT_MAX + 500)]
    raws = [records.encode_deferred(e) for e in entries]
    stop = threading.Event()

    def taker() -> None:
        while not stop.is_set():
            for raw in raws[::7]:
                records.decode_deferred(raw)

    thread = threading.Thread(target=taker)
    thread.start()
    try:
        for raw, entry in zip(raws, entries, strict=True):
            records.remember_deferred(raw, entry)
            assert len(records._recent) <= records.RECENT_MAX
    finally:
        stop.set()
        thread.join()
    for raw, entry in zip(raws, entries, strict=True):  # whatever is left, or decoded
        assert records.decode_deferred(raw) == entry
    assert not any(raw in records._recent for raw in raws)
