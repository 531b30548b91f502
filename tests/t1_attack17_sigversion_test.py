"""Attack on verdict labels (scanner/pool.py `scan_fd`, scanner/batch.py `scan_fds`): a
verdict must carry a signature version no newer than the signatures that gave it.

The pool labelled a verdict with the version its health probe knew when the reply
came. A scan judged before a signature update but answered after the probe learned
the update (a slow scan, a long drain batch: clamd finishes scans in flight with the
old engine) was stored as a verdict of the new signatures: a file the update detects
then kept its clean verdict, never rescanned, not even under the mount's grace.

In-process: the real built-in engine behind a client that holds its answer until the
test lets it go (the appliance's side of "slow"); a signature reload in between.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import trio

from vfile.scanner.builtin import BuiltinAppliance
from vfile.scanner.embedded import EmbeddedClient
from vfile.scanner.pool import Pool
from vfile.scanner.verdict import Outcome, Verdict

DEADLINE = 20.0  # generous "does not hang" bound
MALWARE = b"new malware, not yet in the signatures\n"


class Held(EmbeddedClient):
    """The engine judges at once; the answer reaches the pool when `release` is set."""

    def __init__(self, engine: BuiltinAppliance) -> None:
        super().__init__(engine)
        self.judged = trio.Event()
        self.release = trio.Event()

    async def scan_fd(self, fd: int, *, size: int, limit: int | None = None
                      ) -> tuple[Outcome, str]:
        answer = await super().scan_fd(fd, size=size, limit=limit)
        self.judged.set()
        await self.release.wait()
        return answer

    async def scan_fds(self, fds: Sequence[int]) -> list[tuple[Outcome, str]]:
        answers = await super().scan_fds(fds)
        self.judged.set()
        await self.release.wait()
        return answers


def _engine(tmp_path: Path) -> tuple[BuiltinAppliance, Path, int]:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (tmp_path / "x").write_bytes(MALWARE)
    return BuiltinAppliance(str(sigdir)), sigdir, os.open(tmp_path / "x", os.O_RDONLY)


def _update(engine: BuiltinAppliance, sigdir: Path) -> None:
    """The signature update that detects MALWARE."""
    (sigdir / "new.hdb").write_text(
        f"{hashlib.md5(MALWARE).hexdigest()}:{len(MALWARE)}:New.Malware\n")
    engine.reload()


async def _learned(pool: Pool, version: str) -> None:
    while pool.signature_version() != version:  # noqa: ASYNC110 (the probe sets no event)
        await trio.sleep(0.01)


async def _across_an_update(tmp_path: Path, batch: bool) -> tuple[list[Verdict], str, str]:
    """Scan MALWARE (one file, or a batch of three); the engine judges it, the update
    comes and the pool's probe learns it, then the answer arrives. The verdicts, the
    version before the update and after it."""
    engine, sigdir, fd = _engine(tmp_path)
    client = Held(engine)
    pool = Pool([client], retries=0, attempt_timeout=DEADLINE, probe_interval=0.05)
    got: list[Verdict] = []
    done = trio.Event()

    async def scan() -> None:
        if batch:
            got.extend(await pool.scan_fds([(fd, len(MALWARE))] * 3, DEADLINE) or [])
        else:
            verdict = await pool.scan_fd(fd, size=len(MALWARE))
            got.extend([verdict] if verdict is not None else [])
        done.set()

    try:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.serve)
                old = pool.signature_version()
                nursery.start_soon(scan)
                await client.judged.wait()  # clean: the old signatures
                _update(engine, sigdir)
                new = await client.probe()
                await _learned(pool, new)
                client.release.set()
                await done.wait()
                nursery.cancel_scope.cancel()
        # The update does detect it.
        assert await EmbeddedClient(engine).scan_fd(fd, size=len(MALWARE)) == (
            Outcome.INFECTED, "New.Malware")
    finally:
        os.close(fd)
    assert old != new
    return got, old, new


async def test_a_verdict_judged_before_an_update_is_not_labelled_with_it(
        tmp_path: Path) -> None:
    verdicts, old, new = await _across_an_update(tmp_path, batch=False)
    assert [v.outcome for v in verdicts] == [Outcome.CLEAN]
    # Judged by the old signatures: labelled so, and the update makes it stale.
    assert [v.sig_version for v in verdicts] == [old], (verdicts, old, new)


async def test_a_batch_judged_before_an_update_is_not_labelled_with_it(
        tmp_path: Path) -> None:
    verdicts, old, new = await _across_an_update(tmp_path, batch=True)
    assert [v.outcome for v in verdicts] == [Outcome.CLEAN] * 3
    assert [v.sig_version for v in verdicts] == [old] * 3, (verdicts, old, new)
