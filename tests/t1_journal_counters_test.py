"""The journal's incremental figures (format 2): per-profile counters and the profile
index stay equal to what a walk of every entry says, through every kind of write;
`list_deferred(limit=N)` is the oldest N; a format-1 journal is upgraded on open."""

from __future__ import annotations

import random
from pathlib import Path

import lmdb

from vfile.journal import Exposure, Identity, Journal, Reason, VerdictRecord, tables


def walked(j: Journal, now: float) -> dict[str, tuple[int, int, float]]:
    out: dict[str, tuple[int, int, float]] = {}
    for e in j.list_deferred():
        n, b, age = out.get(e.profile, (0, 0, 0.0))
        out[e.profile] = (n + 1, b + (e.identity.size if e.identity else 0),
                          max(age, now - e.first_deferred))
    return out


def check(j: Journal, now: float) -> None:
    assert j.check() == []
    assert j.profile_debts() == walked(j, now)
    every = j.list_deferred()
    assert [e.order for e in every] == sorted(e.order for e in every)
    for n in (0, 1, 5, len(every)):
        assert j.list_deferred(limit=n) == every[:n] if n else True
    stats = j.contents()
    assert stats["deferred"] == len(every)
    assert stats["bytes"] == sum(e.identity.size for e in every if e.identity)


async def test_counters_follow_every_write(tmp_path: Path) -> None:
    now = [1_000_000.0]
    j = Journal.open(tmp_path / "state", clock=lambda: now[0], max_attempts=2, sync=False)
    rng = random.Random(5)
    paths = [f"d{i % 3}/f{i}" for i in range(40)]
    profiles = ["default", "uploads", "tmp"]
    try:
        for step in range(400):
            now[0] += 1
            path = rng.choice(paths)
            op = rng.randrange(9)
            ident = Identity(1, paths.index(path), rng.randrange(1, 5000), step, step)
            if op <= 2:
                await j.defer(path, ident if op else None, Reason.WINDOW, rng.choice(profiles),
                              exposure=Exposure(0, 1, "x", now[0]), durable=op == 1)
            elif op == 3:
                e = j.get_deferred(path)
                if e is not None:
                    await j.complete(path, e.seq, VerdictRecord(ident, "s", "clean", "", "a",
                                                                now[0]))
            elif op == 4:
                for e in await j.claim(3, lease=0.5):
                    await j.release(e.path, e.seq, "boom")  # poisons after 2
            elif op == 5:
                await j.forget_path(path)
            elif op == 6:
                await j.rename_path(path, rng.choice(paths))
            elif op == 7:
                await j.rename_tree("d1", "d2") if rng.random() < 0.1 else await j.retry(path)
            else:
                await j.purge(path, poisoned_only=rng.random() < 0.5)
            if step % 20 == 0:
                check(j, now[0])
        check(j, now[0])
    finally:
        j.close()


async def test_format_1_journal_is_upgraded_on_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    clock = lambda: 2_000_000.0  # noqa: E731
    with Journal.open(state, sync=False, clock=clock) as j:
        for i in range(30):
            await j.defer(f"f{i}", Identity(1, i, 10 * i, 0, 0), Reason.UNAVAILABLE,
                          "a" if i % 2 else "b")
    # Make it what format 1 was: no profile index, no counters.
    env = lmdb.open(str(state), max_dbs=tables.MAX_DBS)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        txn.drop(env.open_db(b"profiles", txn=txn), delete=True)
        for key in [bytes(k) for k, _ in txn.cursor(db=meta) if bytes(k).startswith(b"p:")]:
            txn.delete(key, db=meta)
        txn.put(b"format", b"1", db=meta)
    env.close()
    with Journal.open(state, readonly=True, clock=clock) as j:  # read-only: walked
        before = j.profile_debts()
        assert before["a"][:2] == (15, sum(10 * i for i in range(1, 30, 2)))
        assert len(j.list_deferred(limit=7)) == 7
    with Journal.open(state, clock=clock) as j:
        assert j.profile_debts() == before
        check(j, clock())
    env = lmdb.open(str(state), max_dbs=tables.MAX_DBS, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"format", db=env.open_db(b"meta", txn=txn)) == b"2"
    env.close()


async def test_check_names_each_broken_invariant(tmp_path: Path) -> None:
    """`Journal.check` finds an index key without its entry, an entry missing from an
    index, a counter that disagrees, and an undecodable entry (each damage made with
    plain LMDB, as a crash or a bug in a writer would leave it)."""
    state = tmp_path / "state"
    with Journal.open(state, sync=False) as j:
        for i in range(4):
            await j.defer(f"f{i}", Identity(1, i, 100, 0, 0), Reason.UNAVAILABLE, "p")
        assert j.check() == []
    env = lmdb.open(str(state), max_dbs=tables.MAX_DBS)
    with env.begin(write=True) as txn:
        order = env.open_db(b"order", txn=txn)
        first = bytes(next(txn.cursor(db=order).iternext(keys=True, values=False)))
        txn.delete(first, db=order)                          # an entry left the index
        txn.put(b"\xff" * 12, b"", db=order)                # a key for no entry
        meta = env.open_db(b"meta", txn=txn)
        txn.put(b"p:p", (5).to_bytes(8, "big") + (500).to_bytes(8, "big"), db=meta)
        deferred = env.open_db(b"deferred", txn=txn)
        other = next(bytes(k) for k in txn.cursor(db=deferred).iternext(keys=True, values=False)
                     if not first.endswith(bytes(k)))  # not the entry that left the index
        txn.put(other, b"not a record", db=deferred)
    env.close()
    with Journal.open(state, readonly=True) as j:
        found = j.check()
    assert any("undecodable" in p for p in found), found
    assert any("order index" in p and "is missing" in p for p in found), found
    assert any("order index" in p and "names no such entry" in p for p in found), found
    assert any("profile 'p': counters" in p for p in found), found
