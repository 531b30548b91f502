"""The fleet's most-opened contents, rescanned in the background after a signature update.

A signature update makes every stored verdict a miss (the version is in the
key). The grace (scanner.cache_grace) answers the storm from the previous
version and rescans what was asked; this module gets ahead of the storm: the
contents the fleet opens most are rescanned under the new version as soon as
the caching appliance sees it, at a rate limit, so the next boot storm hits.

- Counting: every scan request counts one open of its digest in memory; once a
  `interval` the counts go to one Redis sorted set (`hot_key`: ZINCRBY in one
  pipeline, shared by every caching appliance of the fleet), which is trimmed
  to its `track` highest members (bounded), and the `top` highest come back.
- Keeping bytes: a rescan needs the content, and Redis holds only verdicts.
  A content among the top (or any, while fewer than `top` are known and kept)
  that this appliance is asked for is copied once into
  its hot directory (`--hot-dir`, named by its SHA-256), at most `max_file`
  bytes each and `max_bytes` in all; copies that left the top are evicted
  when room is needed. The directory survives a restart.
- After an update: the top digests with a copy here are rescanned at `rate`
  per second through the caching appliance's own miss path (Redis lookup, the
  fleet's scan lock, the upstream pool, store under the new version), so a
  content another appliance rescanned first costs a Redis hit, not a scan.

Invariants: a copy is re-hashed when it is read for a rescan, and a copy
whose SHA-256 is not its name is deleted, never scanned under that name (the
directory is not trusted more than Redis); errors are never stored (the miss
path stores only upstream verdicts); every Redis call is bounded and a Redis
outage only skips counting and passes; memory is bounded by `MAX_COUNTS`
digests counted between flushes and `track` + `top` names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from vfile.scanner.cache import CacheDown, RedisVerdicts
from vfile.scanner.verdict import Verdict

log = logging.getLogger(__name__)

DEFAULT_TOP = 1000
DEFAULT_MAX_FILE = 16 << 20
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_INTERVAL = 1.0
#: distinct digests counted in memory between two flushes (beyond: dropped, counted)
MAX_COUNTS = 100_000
#: copies waiting to be written to the hot directory
COPY_QUEUE = 64
_NAME = re.compile(r"[0-9a-f]{64}")

#: rescan a kept copy: (digest, path) -> its verdict, or None if the copy is not those bytes
RescanKept = Callable[[str, str], Awaitable[Verdict | None]]


def _copy(src: int, dst: Path) -> int:
    """Write the content of `src` to `dst` (via a temporary name); its size."""
    tmp = dst.with_suffix(".tmp")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                  0o600)
    try:
        offset = 0
        while data := os.pread(src, 1 << 20, offset):
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
            offset += len(data)
    finally:
        os.close(out)
    os.replace(tmp, dst)
    return offset


class Hot:
    """Counts opens per digest, keeps copies of the top ones, rescans them after an update."""

    def __init__(self, cache: RedisVerdicts, directory: str | os.PathLike[str], *,
                 top: int = DEFAULT_TOP, track: int | None = None, rate: float = 20.0,
                 max_file: int = DEFAULT_MAX_FILE, max_bytes: int = DEFAULT_MAX_BYTES,
                 interval: float = DEFAULT_INTERVAL) -> None:
        if top < 1 or rate <= 0 or interval <= 0 or max_file < 1 or max_bytes < 1:
            raise ValueError("hot: top, rate, interval and sizes must be > 0")
        self.cache = cache
        self.dir = Path(directory)
        self.top_n = top
        self.track = max(track or 10 * top, top)
        self.rate = rate
        self.max_file = max_file
        self.max_bytes = max_bytes
        self.interval = interval
        self._counts: Counter[str] = Counter()
        self._top: list[str] = []
        self._hot: set[str] = set()
        self._kept: dict[str, int] = {}  # digest -> bytes of its copy
        self._copying: dict[str, int] = {}  # digest -> bytes, being written
        self._send, self._receive = trio.open_memory_channel[tuple[str, int, int]](COPY_QUEUE)
        self._version = ""
        self.counted = 0
        self.dropped = 0
        self.passes = 0
        self.rescanned = 0
        self.last_pass: dict[str, object] | None = None

    def load(self) -> None:
        """Adopt the copies already in the directory (a restart keeps them)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in os.scandir(self.dir):
            if _NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                self._kept[entry.name] = entry.stat(follow_symlinks=False).st_size
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # a .tmp left by a crash, or not ours

    @property
    def kept_bytes(self) -> int:
        return sum(self._kept.values()) + sum(self._copying.values())

    # --- the request path (no I/O) -------------------------------------------------

    def opened(self, digest: str, fd: int, size: int) -> None:
        """A scan request for `digest` (its bytes in `fd`): count it; keep a copy if hot."""
        if digest in self._counts or len(self._counts) < MAX_COUNTS:
            self._counts[digest] += 1
            self.counted += 1
        else:
            self.dropped += 1
        if digest in self._kept or digest in self._copying or size > self.max_file:
            return
        # Hot, or room for it while the top is not full yet (a fleet smaller than
        # `top` has every content in it; the first flush must not come first).
        room = len(self._hot) < self.top_n and len(self._kept) + len(self._copying) < self.top_n
        if not (digest in self._hot or room) or not self._room(size):
            return
        try:
            kept = os.dup(fd)
        except OSError:
            return
        try:
            self._send.send_nowait((digest, kept, size))
        except trio.WouldBlock:
            os.close(kept)
            return
        self._copying[digest] = size

    def _room(self, size: int) -> bool:
        """Make room for `size` bytes by evicting copies that left the top."""
        over = self.kept_bytes + size - self.max_bytes
        if over <= 0:
            return True
        for digest in [d for d in self._kept if d not in self._hot]:
            with contextlib.suppress(OSError):
                os.unlink(self.dir / digest)
            over -= self._kept.pop(digest)
            if over <= 0:
                return True
        return False

    # --- background -----------------------------------------------------------------

    async def run(self, version: Callable[[], str], rescan_kept: RescanKept, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Copy, count and, after each version change, rescan the top; until cancelled."""
        await trio.to_thread.run_sync(self.load)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._copier)
            task_status.started()
            while True:
                await trio.sleep(self.interval)
                await self._flush()
                now = version()
                if now and self._version and now != self._version:
                    log.info("signature version %s -> %s: rescanning the %d most-opened "
                             "contents kept here", self._version, now,
                             sum(d in self._kept for d in self._top))
                    await self._pass(now, rescan_kept)
                if now:
                    self._version = now

    async def _copier(self) -> None:
        async for digest, fd, _size in self._receive:
            try:
                written = await trio.to_thread.run_sync(_copy, fd, self.dir / digest)
                self._kept[digest] = written
            except OSError as err:
                log.warning("hot: cannot keep a copy of %s: %s", digest, err)
            finally:
                os.close(fd)
                self._copying.pop(digest, None)

    async def _flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        # On CacheDown this interval's counts are lost: a ranking, never a verdict.
        with contextlib.suppress(CacheDown):
            self._top = await self.cache.count_opens(dict(counts), track=self.track,
                                                     top=self.top_n)
            self._hot = set(self._top)

    async def _pass(self, version: str, rescan_kept: RescanKept) -> None:
        done: dict[str, object] = {"version": version}
        rescanned = bad = errors = 0
        for digest in list(self._top):
            if digest not in self._kept:
                continue
            verdict = await rescan_kept(digest, str(self.dir / digest))
            if verdict is None:
                log.warning("hot: the copy of %s is not those bytes: deleted", digest)
                self._kept.pop(digest, None)
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / digest)
                bad += 1
            elif verdict.is_error:
                errors += 1  # no verdict stored: the next request for it scans
            else:
                rescanned += 1
                self.rescanned += 1
            await trio.sleep(1 / self.rate)
        done.update(rescanned=rescanned, bad_copies=bad, errors=errors)
        self.passes += 1
        self.last_pass = done

    def statistics(self) -> dict[str, object]:
        return {"top": len(self._top), "kept": len(self._kept), "kept_bytes": self.kept_bytes,
                "counted": self.counted, "dropped": self.dropped, "passes": self.passes,
                "rescanned": self.rescanned, "last_pass": self.last_pass}
