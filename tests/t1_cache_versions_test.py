"""The caching appliance never answers OK for a scan made under another signature version
than the one it tells guests (VERSION), with a real redis-server.

A guest labels every verdict with the version its appliance reports, so a clean
from an upstream with older signatures (a second clamd not updated yet, reached
by failover or a hedged scan) would be kept by the guest as clean under the
newest signatures: a content only those detect would be served until the next
update. The pool is a fake here, only to pin which upstream answers (fault
injection): upstream "new" is the one VERSION names, "old" scans.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import trio
from fleet_servers import running_redis

from vfile.scanner.cache import RedisVerdicts
from vfile.scanner.cache_server import CacheAppliance
from vfile.scanner.verdict import Verdict

NEW, OLD = "ClamAV 1.4.6/27002", "ClamAV 1.4.6/27001"


class _TwoVersions:
    """VERSION comes from the first upstream (NEW); the scan is answered by the second (OLD)."""

    def __init__(self, answer: Verdict) -> None:
        self.answer = answer
        self.scans = 0

    def signature_version(self) -> str:
        return NEW

    def statistics(self) -> list[dict[str, object]]:
        return [{"sig_version": NEW}]

    async def scan_fd(self, fd: int, *, size: int) -> Verdict:
        self.scans += 1
        return self.answer


def _scan(tmp_path: Path, answer: Verdict, data: bytes) -> tuple[Verdict, Verdict | None]:
    with running_redis(tmp_path / "redis") as redis:
        cache = RedisVerdicts(redis.url)
        pool = _TwoVersions(answer)
        app = CacheAppliance(pool, cache)  # type: ignore[arg-type]
        fd = os.memfd_create("t")
        try:
            os.write(fd, data)
            digest = hashlib.sha256(data).hexdigest()

            async def main() -> tuple[Verdict, Verdict | None]:
                got = await app.scan(digest, fd, len(data))
                return got, await cache.get(digest, answer.sig_version, count=False)

            try:
                return trio.run(main)
            finally:
                cache.close()
        finally:
            os.close(fd)


def test_a_clean_from_an_older_upstream_is_not_answered_as_current(tmp_path: Path) -> None:
    got, stored = _scan(tmp_path, Verdict.clean("clamd://old", OLD), b"only 27002 knows this")
    assert not got.is_clean, got
    assert got.is_error and OLD in got.detail, got
    # it is still a true verdict of its own version: stored under OLD, not NEW
    assert stored is not None and stored.is_clean


def test_infected_from_any_version_is_answered(tmp_path: Path) -> None:
    got, _ = _scan(tmp_path, Verdict.infected("Win.Test-1", "clamd://old", OLD), b"bad")
    assert got.is_infected, got
