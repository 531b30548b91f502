"""An existing file's write intent, committed now and fsynced later (issue 16):
`Journal.defer_unsynced` returns once the record is committed, while the fsync
is still held; `Unsynced.wait()` returns once an fsync begun after the commit
returned; a failed fsync fails the wait (the WRITE then fails with EIO), and a
later wait tries a fresh fsync. The gate's side turns that failure into EIO."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from vfile.filter.intents import Intent
from vfile.filter.writeintents import WriteIntents
from vfile.journal import Identity, Journal, JournalError

IDENTITY = Identity(dev=1, ino=2, size=3, mtime_ns=4, ctime_ns=5)


class HeldSync:
    """Stands in for the LMDB environment: every call passes through, except `sync`,
    which waits for `release` and then fails while `fail` is set."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self.release = threading.Event()
        self.fail = False
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def sync(self, force: bool = False) -> None:
        self.calls += 1
        if not self.release.wait(30):
            raise AssertionError("never released")
        if self.fail:
            raise OSError(errno.EIO, "Input/output error (test)")
        self._env.sync(force)


def held_journal(tmp_path: Path) -> tuple[Journal, HeldSync]:
    j = Journal.open(tmp_path / "state")
    c = j._committer
    held = HeldSync(c._env)
    c._env = held
    c._env_fsync._env = held  # the committer's fsyncs (and only they) call env.sync
    return j, held


async def test_committed_before_the_fsync_durable_after_it(tmp_path: Path) -> None:
    j, held = held_journal(tmp_path)
    try:
        with trio.fail_after(20):
            _, unsynced = await j.defer_unsynced("a", IDENTITY, "default")
        assert not unsynced.durable
        assert j.get_deferred("a") is not None  # committed: readable now
        waited = trio.Event()

        async def wait() -> None:
            await unsynced.wait()
            waited.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(0.2)
            assert not waited.is_set(), "the wait returned before the fsync did"
            held.release.set()
            with trio.fail_after(20):
                await waited.wait()
        assert unsynced.durable
        await unsynced.wait()  # at once, from now on
    finally:
        held.release.set()
        j.close()


async def test_a_failed_fsync_fails_the_wait_and_a_later_one_retries(tmp_path: Path) -> None:
    j, held = held_journal(tmp_path)
    try:
        held.fail = True
        held.release.set()
        with trio.fail_after(20):
            _, unsynced = await j.defer_unsynced("a", IDENTITY, "default")
            with pytest.raises(JournalError):
                await unsynced.wait()
        assert not unsynced.durable
        held.fail = False
        calls = held.calls
        with trio.fail_after(20):
            await unsynced.wait()  # a fresh fsync, begun after the commit
        assert held.calls > calls
        assert unsynced.durable
    finally:
        held.release.set()
        j.close()


class FailingUnsynced:
    durable = False

    async def wait(self) -> None:
        raise JournalError("journal /x: write failed: fsync (test)")


async def test_the_gate_answers_eio_when_the_intent_cannot_be_made_durable() -> None:
    writes = WriteIntents(journal=None, intents=None, records=None,  # type: ignore[arg-type]
                          outcomes=None, stats=None, profile_for=None,  # type: ignore[arg-type]
                          inputs=None)  # type: ignore[arg-type]
    intent = Intent("a")
    intent.unsynced = FailingUnsynced()  # type: ignore[assignment]
    with pytest.raises(OSError) as err:
        await writes.durable(intent)
    assert err.value.errno == errno.EIO
    assert writes.failed == 1 and writes.waited == 1
    assert intent.unsynced is not None, "a failed intent must not count as durable"
    await writes.durable(None)  # no intent (the profile does not scan after writes)
