"""An infected action asks the kernel to drop its entry for the name; when the kernel
does not (its directory's lock held by a request waiting in the server), the action
goes on after FORGET_NAME_TIMEOUT and says so: a warning and a counter (nl22; before,
it gave up silently, in the passthrough's forget_name)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vfile.config.model import InfectedAction
from vfile.filter import actions as A
from vfile.filter.actions import Actions
from vfile.journal.records import Identity, VerdictRecord
from vfile.journal.store import Journal


@pytest.fixture
def source_fd(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "src/d").mkdir(parents=True)
    fd = os.open(tmp_path / "src", os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


async def test_an_entry_the_kernel_does_not_drop_in_time_is_logged_and_counted(
        tmp_path: Path, source_fd: int, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(A, "FORGET_NAME_TIMEOUT", 0.2)  # not waited for in a test
    bad = tmp_path / "src/d/bad"
    bad.write_bytes(b"bad")
    asked: list[bytes] = []

    async def kernel_stuck(name: bytes) -> None:  # its directory's lock is held
        asked.append(name)
        await trio.sleep_forever()

    journal = Journal.open(tmp_path / "state")
    try:
        acts = Actions(source_fd, journal, quarantine_dir=None)
        acts.forget_name = kernel_stuck
        verdict = VerdictRecord(Identity.from_stat(os.stat(bad)), "sig1", "infected",
                                "Test.Sig", "clamd:///x.sock", 1.0)
        with caplog.at_level(logging.WARNING, logger="vfile.filter.actions"), \
                trio.fail_after(60):  # generous: it hung forever when the callee gave up
            said = await acts.apply(InfectedAction.DELETE, "d/bad", verdict, profile="p")
        assert said == "deleted" and not bad.exists() and asked == [b"d/bad"]
        assert acts.entries_not_dropped == 1
        assert "did not drop its entry for 'd/bad'" in caplog.text
    finally:
        journal.close()
