"""The verdict collector yields to the drain (vfile.filter.verdict_gc), on a real journal.

A pass that starts while the drain scans waits until it is idle, and a pass
waits between batches too; a drain that never ends postpones it only
`max_postpone`, so the table cannot grow without bound.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from vfile.filter import verdict_gc
from vfile.journal import Identity, Journal, VerdictRecord
from vfile.journal.records import VerdictOutcome


def old_verdicts(n: int) -> list[VerdictRecord]:
    """Verdicts at a signature version no appliance reports: garbage for any pass."""
    return [VerdictRecord(identity=Identity(1, i, 100, 1000, 1001), sig_version="old",
                          outcome=VerdictOutcome.CLEAN, signature="", appliance="a", time=0.0)
            for i in range(n)]


async def stored(journal: Journal, records: list[VerdictRecord]) -> Journal:
    for record in records:
        await journal.put_verdict(record)
    return journal


async def test_collection_waits_while_the_drain_is_busy(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    with Journal.open(tmp_path / "state") as journal:
        await stored(journal, old_verdicts(3))
        busy = True
        result: list[verdict_gc.Collected] = []

        async def collect() -> None:
            result.append(await verdict_gc.collect(journal, source=None, signatures=["new"],
                                                   busy=lambda: busy))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            await trio.sleep(100)  # the drain is at work all this time
            assert not result
            assert len(journal.verdicts()) == 3
            busy = False
        assert result[0].collected == 3
        assert journal.verdicts() == []


async def test_a_drain_that_never_ends_postpones_collection_only_so_long(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    with Journal.open(tmp_path / "state") as journal:
        await stored(journal, old_verdicts(verdict_gc.BATCH + 5))  # two batches
        began = trio.current_time()
        done = await verdict_gc.collect(journal, source=None, signatures=["new"],
                                        busy=lambda: True, max_postpone=50)
        assert done.collected == verdict_gc.BATCH + 5
        assert journal.verdicts() == []
        # Postponed before the pass and between its batches: 50 s in all, not per wait.
        assert 50 <= trio.current_time() - began < 52
