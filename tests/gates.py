"""The gate without the kernel, for t1 tests: the real built-in appliance
(in-process), a real Pool and a real Journal in tmp_path, and the hooks
called as the passthrough would call them.

    async with gate_env(tmp_path, profile_toml("safe", "0.5s")) as env:
        env.write("a.txt", b"..."); await env.open("a.txt"); env.gate.statistics()
"""

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from servers import running_builtin

from vfile.config.model import Config
from vfile.config.reader import parse_config
from vfile.filter import racy
from vfile.filter.actions import Actions
from vfile.filter.gate import Gate
from vfile.hooks import RequestCtx
from vfile.journal.records import Identity
from vfile.journal.store import Journal
from vfile.scanner.builtin import BuiltinAppliance
from vfile.scanner.pool import Pool

CTX = RequestCtx(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)
#: generous "does not hang" margin on top of a profile's deadline
MARGIN = 3.0


@dataclass
class Env:
    source: Path
    qdir: Path
    appliance: BuiltinAppliance
    pool: Pool
    journal: Journal
    gate: Gate
    source_fd: int
    config: Config
    actions: Actions

    def write(self, rel: str, data: bytes) -> None:
        path = self.source / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        # Past the file's timestamp tick, so a scan's verdict is kept (not "racy clean",
        # vfile.filter.racy): the tests count scans and cache hits.
        time.sleep(2 * racy.TICK_NS / 1e9)

    async def open(self, rel: str, flags: int = os.O_RDONLY) -> None:
        fd = os.open(self.source / rel, flags)
        try:
            await self.gate.on_open(rel.encode(), fd, os.fstat(fd), flags, CTX)
        finally:
            os.close(fd)

    def identity(self, rel: str) -> Identity:
        return Identity.from_stat(os.stat(self.source / rel))


@asynccontextmanager
async def gate_env(tmp_path: Path, config: str = "", *, probe_interval: float = 60.0,
                   sigdir: Path | None = None) -> AsyncIterator[Env]:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    qdir = tmp_path / "quarantine"
    journal = Journal.open(tmp_path / "state")
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        async with running_builtin(tmp_path, sigdir) as builtin:
            pool = Pool([builtin.unix_url], attempt_timeout=1.0, retries=1,
                        probe_interval=probe_interval, breaker_failures=3)
            actions = Actions(source_fd, journal, quarantine_dir=str(qdir))
            parsed = parse_config(config)
            gate = Gate(parsed, pool, journal, actions, source_fd=source_fd)
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.serve)
                await nursery.start(gate.serve)
                yield Env(source, qdir, builtin.appliance, pool, journal, gate, source_fd,
                          parsed, actions)
                nursery.cancel_scope.cancel()
    finally:
        journal.close()
        os.close(source_fd)


async def until(predicate: Callable[[], bool]) -> None:
    """Poll state that has no event to wait on, failing after MARGIN seconds."""
    with trio.fail_after(MARGIN):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


def profile_toml(fail_mode: str, deadline: str = "1s", extra: str = "") -> str:
    """A `default` profile with this fail mode, deadline (= attempt timeout) and `extra`."""
    return (f'[[profile]]\nname="default"\nfail_mode="{fail_mode}"\ndeadline="{deadline}"\n'
            f'attempt_timeout="{deadline}"\n{extra}')
