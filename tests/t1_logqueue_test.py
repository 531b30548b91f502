"""The queued log handler: lines leave on a writer thread, and `accepted`/`written`
give tests (and operators) a barrier: once `written` reaches an `accepted` value,
every line accepted before it is in the file."""

from __future__ import annotations

import io
import logging
import threading
import time

from vfile.observe.logqueue import QueuedHandler


def _wait(check: object, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, "the writer thread did not catch up"
        time.sleep(0.01)


def test_written_reaching_accepted_means_every_earlier_line_is_out() -> None:
    out = io.StringIO()
    handler = QueuedHandler(logging.StreamHandler(out))
    log = logging.getLogger("t1_logqueue.barrier")
    log.propagate = False
    log.addHandler(handler)
    try:
        for n in range(200):
            log.warning("line %d", n)
        target = handler.statistics()["accepted"]
        assert target == 200
        _wait(lambda: handler.statistics()["written"] >= target)
        assert out.getvalue().splitlines() == [f"line {n}" for n in range(200)]
    finally:
        log.removeHandler(handler)
        handler.close()


class _Stuck(io.StringIO):
    """A stream whose writes block until released (a frozen disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(10)
        return super().write(s)


def test_a_full_queue_drops_and_does_not_count_the_dropped_as_accepted() -> None:
    stuck = _Stuck()
    handler = QueuedHandler(logging.StreamHandler(stuck), size=5)
    log = logging.getLogger("t1_logqueue.full")
    log.propagate = False
    log.addHandler(handler)
    try:
        for n in range(20):
            log.warning("line %d", n)  # never blocks, even with the writer stuck
        stats = handler.statistics()
        assert stats["dropped"] >= 20 - 5 - 1  # the writer may hold one line
        assert stats["accepted"] + stats["dropped"] == 20
        stuck.release.set()
        _wait(lambda: handler.statistics()["written"] >= stats["accepted"])
        lines = [ln for ln in stuck.getvalue().splitlines() if ln.startswith("line")]
        assert len(lines) == stats["accepted"]
    finally:
        log.removeHandler(handler)
        handler.close()
