"""A memory report's object census never breaks another thread's work.

`gc.get_objects()` hands out references to every tracked object, a tuple that
another thread is still filling in included; CPython then refuses to grow that
tuple (SystemError), which failed a user's write-open in a soak
(vfile.observe.memwatch). Real threads, real reports, no mocks."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

from vfile.observe.memwatch import MemoryWatch, census


def _numbers(n: int) -> Iterator[int]:
    yield from range(n)  # Python code between items: the GIL can move mid-tuple


def test_reports_while_another_thread_builds_tuples_break_nothing() -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the server's
    errors: list[BaseException] = []
    built = 0
    stop = threading.Event()

    def build() -> None:
        nonlocal built
        while not stop.is_set():
            try:
                tuple(_numbers(64))
                built += 1
            except SystemError as err:
                errors.append(err)
                return

    worker = threading.Thread(target=build)
    worker.start()
    watch = MemoryWatch()
    reports = 0
    try:
        # 4 s of reports, and at least two however loaded the machine is (one
        # report took over 4 s at load 10): bounded by a "does not hang" minute.
        deadline, cap = time.monotonic() + 4.0, time.monotonic() + 60.0
        while (time.monotonic() < deadline or reports < 2) and not errors \
                and time.monotonic() < cap:
            rep = watch.report(top=5, types=True, baseline=reports == 0)
            assert rep["gc_objects"] > 0 and rep["types"]
            reports += 1
    finally:
        stop.set()
        worker.join(10)
        sys.setswitchinterval(old)
    assert errors == [], f"after {reports} reports and {built} tuples"
    assert reports >= 2 and built > 0
    assert sys.getswitchinterval() == old


def test_census_counts_by_type_name() -> None:
    class Marker:
        pass

    keep = [Marker() for _ in range(100)]
    total, by_type = census()
    markers = sum(n for name, n in by_type.items() if name.endswith(".Marker"))
    assert markers >= 100 and total == sum(by_type.values())
    del keep
