"""Storm-free signature updates for the caching appliance: a bounded grace period.

Without grace, an upstream signature update turns every next scan of every
guest into a miss at once (the version is part of the key): the farm takes
the whole fleet's working set in one storm. With `--grace SECONDS`, for that
long after the caching appliance sees the version change from A to B:

- a miss under B whose verdict under A is *clean* is answered clean at once,
  and the bytes are kept (the guest's descriptor, or the memory file of an
  INSTREAM) in a bounded queue that a background task rescans under B at
  `--rescan-rate` scans/s, storing the B verdict;
- an infected verdict under A never carries over: that content is scanned
  under B before the answer, as without grace; so is anything when the queue
  is full (the bytes could not be kept for the rescan);
- every carried-over digest is added to a Redis set for B (scanner.cache.
  carried_key) and removed only when its B verdict is stored, so `STATS`
  (`carried_pending`) shows what the rescan has not covered yet;
- VERSION answers `B+grace` during the period, so guests key the verdicts
  they keep locally on a version that ends with it: after the grace every
  guest asks again and gets B's own verdicts (by then mostly rescanned: hits).

The trade-off is explicit and bounded: during the grace, a content whose
verdict changes from clean under A to infected under B is still answered
clean, for at most the grace period (plus a guest's probe interval). Grace
is off by default. Guests whose profiles must not accept it (`closed`
profiles that opt out) use a caching appliance, or a listener, without grace.

Invariants: the queue never holds more than `queue_size` descriptors nor
`queue_bytes` bytes of kept copies; every
descriptor taken is closed exactly once (after its rescan, or at shutdown);
a rescan that fails is retried (paced), never dropped, while the service runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from vfile.scanner.cache import CacheDown, RedisVerdicts
from vfile.scanner.cache_defaults import DEFAULT_RESCAN_RATE
from vfile.scanner.verdict import Verdict

log = logging.getLogger(__name__)

GRACE_SUFFIX = "+grace"
DEFAULT_QUEUE = 512  # descriptors kept: stay well under a default 1024 fd limit
#: bytes of kept copies at most (they are memory files)
DEFAULT_QUEUE_BYTES = 1 << 30
RETRY_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class _Rescan:
    digest: str
    fd: int
    size: int
    version: str  # the version it was carried over into


Rescan = Callable[[str, int, int], Awaitable[Verdict]]


class Grace:
    def __init__(self, cache: RedisVerdicts, *, seconds: float, rate: float = DEFAULT_RESCAN_RATE,
                 queue_size: int = DEFAULT_QUEUE,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        if seconds < 0 or rate <= 0 or queue_size < 1:
            raise ValueError("grace must be >= 0 s, the rescan rate > 0, the queue >= 1")
        self.cache = cache
        self.seconds = seconds
        self.rate = rate
        self._send, self._receive = trio.open_memory_channel[_Rescan](queue_size)
        self.current = ""
        self.previous = ""
        self._changed_at = -float("inf")
        self.carried = 0
        self.refused_full = 0
        self._queued: set[tuple[str, str]] = set()  # (digest, version) awaiting its rescan
        self.queue_bytes = queue_bytes
        self._queued_bytes = 0
        self.rescanned = 0

    # --- the version clock ----------------------------------------------------

    def observe(self, version: str) -> None:
        """Note the upstream's version; a change starts a grace period."""
        if not version or version == self.current:
            return
        if self.current and self.seconds > 0:
            log.warning("signature version %s -> %s: carrying clean verdicts over for %gs",
                        self.current, version, self.seconds)
            self.previous = self.current
            self._changed_at = trio.current_time()
        self.current = version

    def active(self) -> bool:
        return bool(self.previous) and trio.current_time() - self._changed_at < self.seconds

    def guest_version(self, version: str) -> str:
        """What VERSION tells guests: marked during a grace, so their local verdicts end with it."""
        return version + GRACE_SUFFIX if self.active() and version == self.current else version

    # --- carrying over ----------------------------------------------------------

    async def carry_over(self, digest: str, version: str, fd: int, size: int) -> Verdict | None:
        """The previous version's clean verdict, if it may stand in for now; else None.

        Raises CacheDown (the caller scans uncached)."""
        if not self.active() or version != self.current:
            return None
        old = await self.cache.get(digest, self.previous, count=False)
        if old is None or not old.is_clean:
            return None  # absent, or infected: infected never carries over
        if (digest, version) in self._queued:
            self.carried += 1  # its rescan is queued already: no second copy of the bytes
            return Verdict.clean(old.appliance, version)
        if self._queued_bytes + size > self.queue_bytes:
            self.refused_full += 1
            return None
        try:
            kept = os.dup(fd)
        except OSError:
            return None
        try:
            self._send.send_nowait(_Rescan(digest, kept, size, version))
        except trio.WouldBlock:
            os.close(kept)
            self.refused_full += 1
            return None
        self._queued.add((digest, version))
        self._queued_bytes += size
        try:
            await self.cache.carry(digest, version)
        except CacheDown:
            # queued all the same: the rescan covers it, only the record is missing
            log.warning("could not record carried-over %s under %s", digest, version)
        self.carried += 1
        return Verdict.clean(old.appliance, version)

    async def run(self, rescan: Rescan, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rescan carried-over contents under the current version, paced; until cancelled."""
        task_status.started()
        try:
            async for item in self._receive:
                try:
                    while True:
                        verdict = await rescan(item.digest, item.fd, item.size)
                        await trio.sleep(1 / self.rate)
                        if not verdict.is_error:
                            break
                        log.info("rescan of %s failed (%s); retrying", item.digest,
                                 verdict.detail)
                        await trio.sleep(RETRY_AFTER)
                    self.rescanned += 1
                    with contextlib.suppress(CacheDown):
                        await self.cache.covered(item.digest, item.version)
                finally:
                    os.close(item.fd)
                    self._queued.discard((item.digest, item.version))
                    self._queued_bytes -= item.size
        finally:
            while True:  # close what is still queued
                try:
                    os.close(self._receive.receive_nowait().fd)
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._receive.close()

    async def statistics(self) -> dict[str, object]:
        pending: int | None = None
        if self.current:
            with contextlib.suppress(CacheDown):
                pending = await self.cache.carried_pending(self.current)
        return {"seconds": self.seconds, "active": self.active(), "previous": self.previous,
                "carried": self.carried, "rescanned": self.rescanned,
                "queued": self._send.statistics().current_buffer_used,
                "queued_bytes": self._queued_bytes,
                "refused_full": self.refused_full, "carried_pending": pending}
