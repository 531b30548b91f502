"""NameLock by path (vfile.passthrough.namelock), without a mount: what waits for what.

The mount-level cases are tests/t5_namelock22_test.py (an unrelated operation goes on
while a stalled one holds its directory) and tests/t5_race21_dirs_test.py (a directory
move waits for the name operations below it).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from vfile.passthrough.namelock import NameLock, fixed, related


@pytest.mark.parametrize(("a", "b", "expected"), [
    (b"d0", b"d0", True), (b"d0", b"d0/w", True), (b"d0/w", b"d0", True),
    (b"d0", b"d01", False), (b"d0", b"d1/d0", False), (b"", b"x/y", True),
    (b"a/d0/w", b"a/d0/v", False), (b"a/d0", b"a/d0/v/x", True),
])
def test_related_paths(a: bytes, b: bytes, expected: bool) -> None:
    assert related(a, b) is expected


async def _hold(cm: object, entered: list[str], name: str, until: trio.Event) -> None:
    async with cm:  # type: ignore[attr-defined]
        entered.append(name)
        await until.wait()


async def test_a_move_waits_for_its_subtree_only_and_keeps_new_holders_of_it_out() -> None:
    lock = NameLock()
    entered: list[str] = []
    stall, done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold, lock.shared(fixed(b"a/d0/w", b"a/d0/v")), entered,
                           "stalled", stall)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_hold, lock.exclusive(fixed(b"a/d0", b"a/d1")), entered,
                           "exchange", done)
        await trio.testing.wait_all_tasks_blocked()  # it waits, before the others come
        nursery.start_soon(_hold, lock.exclusive(fixed(b"g/x", b"g/y")), entered,
                           "elsewhere", done)
        nursery.start_soon(_hold, lock.shared(fixed(b"e/s", b"e/t")), entered,
                           "unrelated", done)
        nursery.start_soon(_hold, lock.shared(fixed(b"a/d1/old")), entered,
                           "below the waiting move", done)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(entered) == ["elsewhere", "stalled", "unrelated"]
        # The stalled holder adds a path (a hard link's surviving name) below the move
        # that waits for it: it must not wait for that move (a deadlock).
        async with lock.shared(fixed(b"a/d1/z"), nested=True):
            entered.append("nested")
        stall.set()
        await trio.testing.wait_all_tasks_blocked()
        assert entered[-1] == "exchange"  # then, after it, the one below it
        done.set()
    assert entered[-1] == "below the waiting move"


async def test_paths_are_computed_again_after_a_wait() -> None:
    """A holder that waited for a move sees the paths as they are after it."""
    lock = NameLock()
    where = {"d": b"d0"}
    got: list[tuple[bytes, ...]] = []
    release = trio.Event()

    async def below() -> None:
        async with lock.shared(lambda: (where["d"] + b"/w",)) as held:
            got.append(tuple(held))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold, lock.exclusive(fixed(b"d0", b"d1")), [], "move", release)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(below)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        where["d"] = b"d1"  # the move happened
        release.set()
    assert got == [(b"d1/w",)]


async def test_a_move_cancelled_while_waiting_lets_the_holders_behind_it_go_on() -> None:
    lock = NameLock()
    entered: list[str] = []
    stall = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold, lock.shared(fixed(b"d0/w")), entered, "stalled", stall)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as moving:
            moving.start_soon(_hold, lock.exclusive(fixed(b"d0")), entered, "move", stall)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_hold, lock.shared(fixed(b"d0/x")), entered, "behind",
                               trio.Event())
            await trio.testing.wait_all_tasks_blocked()
            assert entered == ["stalled"]
            moving.cancel_scope.cancel()  # e.g. the request was interrupted
        await trio.testing.wait_all_tasks_blocked()
        assert entered == ["stalled", "behind"]
        nursery.cancel_scope.cancel()
