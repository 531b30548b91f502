"""A close scan judged at once (by content hash) whose completion was queued, then an
unexpected error before the batch counted it parked (nl22, round-7 review): the error
path ended the intent and the completion's callback ended it again, taking the batch's
parked count below zero, so the batch never finished and `wait_idle` never returned.
Its intent must end exactly once, whichever comes first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from gates import CTX, MARGIN, gate_env

from vfile.filter import closing


async def _written(env: object, rel: str, data: bytes) -> None:
    gate, source = env.gate, env.source  # type: ignore[attr-defined]
    await gate.on_write_intent(rel.encode(), None, CTX)
    env.write(rel, data)  # type: ignore[attr-defined]
    await gate.on_last_close(rel.encode(), None, os.stat(source / rel))


async def test_an_error_after_the_completion_was_queued_ends_the_intent_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"the same bytes\n" * 100
    async with gate_env(tmp_path) as env:
        await _written(env, "a.txt", data)  # scanned by the appliance: its hash is known
        with trio.fail_after(30):
            await env.gate.wait_idle()
        before = env.gate.statistics()["close_scans_by_hash"]

        def broken(self: object, record: object, fd: int) -> None:
            raise RuntimeError("an unexpected error after the completion was queued")

        with monkeypatch.context() as patched:
            patched.setattr(closing.CloseScans, "_remember_linked", broken)
            await _written(env, "b.txt", data)
            with trio.fail_after(30 + MARGIN):  # hung forever before the fix
                await env.gate.wait_idle()
        # And the next one (the count may have gone wrong after the batch finished).
        await _written(env, "c.txt", data)
        with trio.fail_after(30 + MARGIN):
            await env.gate.wait_idle()
        stats = env.gate.statistics()
        assert stats["close_scans_by_hash"] == before + 2  # the route under test was taken
        assert stats["pending_intents"] == 0
        # Their completions committed: c.txt's covered the new file (no entry ever made);
        # b.txt's error ended its intent unresolved first, which made its record
        # (filter.newfiles), so its verdict is stored beside an entry the drain settles.
        assert env.journal.get_deferred("c.txt") is None
        inos = {v.identity.ino for v in env.journal.verdicts()}
        assert os.stat(env.source / "b.txt").st_ino in inos
