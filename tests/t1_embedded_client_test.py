"""The embedded default's client (scanner/embedded.py) in-process: verdicts, the inline
read of a small cached file, the worker-thread read otherwise, and no descriptor leaked
when a scan is cancelled. (Through a real mount: tests/t4_builtin_embedded_test.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from vfile.scanner.builtin import BuiltinAppliance
from vfile.scanner.embedded import INLINE_MAX, EmbeddedClient, _cached
from vfile.scanner.faults import Fault
from vfile.scanner.pool import Pool
from vfile.scanner.signatures import EICAR, EICAR_NAME
from vfile.scanner.verdict import ApplianceError, Outcome


def _open(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_cached_reads_a_small_file_whole_and_nothing_larger(tmp_path: Path) -> None:
    fd = _open(tmp_path / "small", b"x" * 5000)
    big = _open(tmp_path / "big", b"y" * (INLINE_MAX + 1))
    empty = _open(tmp_path / "empty", b"")
    try:
        assert _cached(fd) == b"x" * 5000  # just written: in the page cache
        assert _cached(big) is None
        assert _cached(empty) == b""
    finally:
        for d in (fd, big, empty):
            os.close(d)


async def test_verdicts_inline_and_on_a_thread(tmp_path: Path) -> None:
    client = EmbeddedClient(BuiltinAppliance())
    assert (await client.probe()).startswith("vfile-builtin 1")
    before = _fds()
    for name, data, want in (("e.com", EICAR, (Outcome.INFECTED, EICAR_NAME)),
                             ("c.txt", b"clean\n", (Outcome.CLEAN, "")),
                             ("big", b"z" * (INLINE_MAX * 3), (Outcome.CLEAN, ""))):
        fd = _open(tmp_path / name, data)
        try:
            assert await client.scan_fd(fd, size=len(data)) == want
            assert await client.scan_fds([fd]) == [want]  # the thread path, whatever the size
        finally:
            os.close(fd)
    assert _fds() == before


async def test_a_malformed_result_is_an_error_never_clean(tmp_path: Path) -> None:
    engine = BuiltinAppliance(fault=Fault("garbage"))
    fd = _open(tmp_path / "c.txt", b"clean\n")
    try:
        with pytest.raises(ApplianceError, match="malformed result"):
            await EmbeddedClient(engine).scan_fd(fd, size=6)
        pool = Pool([EmbeddedClient(engine)], retries=0)
        verdict = await pool.scan_fd(fd, size=6)
        assert verdict.outcome is Outcome.ERROR and verdict.appliance == "embedded", verdict
    finally:
        os.close(fd)


async def test_a_cancelled_scan_leaks_no_descriptor(tmp_path: Path) -> None:
    engine = BuiltinAppliance(fault=Fault("blackhole"))
    fd = _open(tmp_path / "big", b"z" * (INLINE_MAX * 3))
    before = _fds()
    with trio.move_on_after(0.05) as cs:
        await EmbeddedClient(engine).scan_fd(fd, size=INLINE_MAX * 3)
    assert cs.cancelled_caught
    engine.set_fault(None)
    async with trio.open_nursery() as nursery:  # cancelled while its thread runs
        nursery.start_soon(EmbeddedClient(engine).scan_fds, [fd] * 50)
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    os.close(fd)
    with trio.fail_after(30):
        # the abandoned thread closes its duplicates (no event to wait on: poll /proc)
        while _fds() >= before:  # noqa: ASYNC110
            await trio.sleep(0.01)
