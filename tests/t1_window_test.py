"""Window state and its --max expiry, on trio's mock clock."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from vfile.filter.window import DEFAULT_MAX_WINDOW, Window


async def test_open_close_notifies_listeners() -> None:
    seen: list[bool] = []
    window = Window()
    window.subscribe(seen.append)
    window.open(10)
    window.open(10)  # extending does not notify twice
    assert window.active and window.close() and not window.close()
    assert seen == [True, False]
    assert window.statistics()["windows_total"] == 1


async def test_rejects_non_positive_duration() -> None:
    with pytest.raises(ValueError, match="positive"):
        Window().open(0)


@pytest.mark.parametrize("limit", [math.nan, math.inf, 86400.5])
async def test_rejects_a_duration_it_cannot_end(limit: float) -> None:
    """A NaN deadline crashed `serve` (and the mount server with it); an infinite one
    never ended (b27, tests/t4_input27_test.py through the control socket)."""
    with pytest.raises(ValueError, match="at most 86400s"):
        Window().open(limit)


async def test_max_duration_ends_a_forgotten_window(autojump_clock: trio.testing.MockClock) -> None:
    window = Window()
    async with trio.open_nursery() as nursery:
        await nursery.start(window.serve)
        window.open(5)
        await trio.sleep(4.9)
        assert window.active
        await trio.sleep(0.2)
        assert not window.active
        window.open()  # no --max: the default ceiling still applies
        await trio.sleep(DEFAULT_MAX_WINDOW + 1)
        assert not window.active
        nursery.cancel_scope.cancel()


async def test_wait_closed_returns_on_resume(autojump_clock: trio.testing.MockClock) -> None:
    window = Window()
    window.open(100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(window.wait_closed)
        await trio.sleep(1)
        window.close()
    assert not window.active
