"""The caching appliance: a clamd-protocol server that scans each content once per fleet.

Guests use it like any clamd (PING, VERSION, INSTREAM, FILDES on unix
sockets, IDSESSION): the connection handling is the built-in appliance's
(scanner.builtin), only the commands differ. For every scan it hashes the
bytes it received with SHA-256 and asks Redis (scanner.cache) for the verdict
of (digest, upstream signature version):

- hit: answered at once, no upstream contact;
- miss: one proxy takes a short Redis lock (SET NX PX) and scans upstream
  through the pool (scanner.pool: priority, breakers, deadlines), then stores
  the clean or infected verdict under the signature version that actually
  produced it, with a TTL; the other proxies (and concurrent requests in this
  process, which share one flight without asking Redis twice) poll for the
  value until the lock goes, and scan themselves only if it never comes;
- Redis down (error, timeout, breaker open): scan upstream as if there were no
  cache, counted in `uncached`;
- a value not in our exact format: a miss (scanner.cache.decode);
- with a grace period after a signature update (scanner.cache_grace), a miss
  whose previous-version verdict was clean is answered from it and rescanned
  in the background.

VERSION answers the upstream's signature version, so a guest's own verdict
cache is keyed on the same version as the fleet's. While no upstream has ever
answered there is no version to give: the connection is closed without a
reply, which the guest counts as an appliance failure (never a clean).

Invariants: what is scanned upstream is exactly what was hashed: the bytes
are copied once into a sealed memory file (a stream as it arrives, a passed
descriptor read once), and only that copy goes upstream; nothing but an
upstream verdict or a well-formed cached one is ever answered as OK; errors
are never stored; every wait has a bound (Redis socket timeouts, the lock
TTL, the pool's per-attempt timeouts and retries). Memory: at most
max_inflight requests hold a copy, each at most max_stream bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field

import trio

from vfile.scanner.builtin import (
    DEFAULT_MAX_STREAM,
    NO_FD,
    TOO_LONG,
    BuiltinAppliance,
    _Conn,
)
from vfile.scanner.cache import CacheDown, RedisVerdicts
from vfile.scanner.cache_defaults import DEFAULT_MAX_INFLIGHT
from vfile.scanner.cache_grace import Grace
from vfile.scanner.cache_hot import Hot
from vfile.scanner.net import FILE_READS
from vfile.scanner.pool import Pool
from vfile.scanner.verdict import Verdict

log = logging.getLogger(__name__)

#: how often a proxy waiting on another's scan looks for the verdict (first, last)
POLL_FIRST = 0.01
POLL_MAX = 0.1


class _TooBig(Exception):
    pass


def _new_memfd() -> int:
    return os.memfd_create("vfile-cache-scan", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def _seal(fd: int) -> None:
    """No more changes to the memory file: what was hashed is what gets scanned."""
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)


def _snapshot(src: int, limit: int) -> tuple[int, str, int]:
    """Copy `src` into a sealed memory file while hashing it: (memfd, SHA-256, size).

    The guest's descriptor is read once. Scanning it again upstream would let
    whoever holds it change the file between our hash and the scan, and have
    the scan's clean verdict stored under the hash of other bytes.
    """
    out = _new_memfd()
    try:
        h = hashlib.sha256()
        offset = 0
        while True:
            data = os.pread(src, 1 << 20, offset)
            if not data:
                break
            offset += len(data)
            if offset > limit:
                raise _TooBig
            h.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
        _seal(out)
        return out, h.hexdigest(), offset
    except BaseException:
        os.close(out)
        raise


def _clean_text(text: str, limit: int = 200) -> str:
    """An upstream's reason, made safe to put in a one-line clamd reply."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:limit] or "error"


def reply_for(verdict: Verdict, subject: str) -> bytes:
    if verdict.is_clean:
        return f"{subject}: OK".encode()
    if verdict.is_infected:
        return f"{subject}: {verdict.detail} FOUND".encode()
    return f"{subject}: {_clean_text(verdict.detail)} ERROR".encode()


def version_reply(sig_version: str) -> bytes:
    """VERSION text that a guest parses back (clamd_proto.parse_version) to `sig_version`."""
    engine, sep, rest = sig_version.partition("/")
    text = engine + sep + rest.replace("/", "_")  # an ICAP ISTag may hold slashes
    return _clean_text(text, 400).encode()


@dataclass(slots=True)
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    verdict: Verdict | None = None


@dataclass(slots=True)
class ServerStats:
    requests: int = 0
    served_from_cache: int = 0
    upstream_scans: int = 0
    shared_local: int = 0  # waited on a scan of this process
    shared_remote: int = 0  # waited on another proxy's scan (Redis lock)
    uncached: int = 0  # scanned without the cache: Redis down
    store_failures: int = 0
    carried_over: int = 0  # answered from the previous version's clean (grace)
    other_version: int = 0  # a clean of another signature version: answered as an error


class CacheAppliance(BuiltinAppliance):
    """The built-in appliance's server side in front of an upstream pool and a Redis cache."""

    def __init__(self, pool: Pool, cache: RedisVerdicts, *,
                 max_stream: int = DEFAULT_MAX_STREAM, grace: Grace | None = None,
                 hot: Hot | None = None, max_inflight: int = DEFAULT_MAX_INFLIGHT) -> None:
        super().__init__(None, None, max_stream=max_stream)
        # copies held at once: memory stays under max_inflight x max_stream; more
        # requests wait (their bytes stay in the kernel's socket buffers meanwhile)
        self._copies = trio.Semaphore(max_inflight)
        self.pool = pool
        self.cache = cache
        self.grace = grace
        #: opens per digest, copies of the most-opened, rescanned after an update
        self.hot = hot
        self.stats = ServerStats()
        self._flights: dict[tuple[str, str], _Flight] = {}

    # --- what the guests see ------------------------------------------------

    def upstream_version(self) -> str:
        """The signature version of the upstream that would scan now, else the last known."""
        version = self.pool.signature_version()
        if not version:
            for app in self.pool.statistics():
                if app["sig_version"]:
                    version = str(app["sig_version"])
                    break
        if self.grace is not None:
            self.grace.observe(version)
        return version

    def version(self) -> str:
        return self.upstream_version()

    def statistics(self) -> dict[str, object]:
        c = self.cache.stats
        return {
            **{k: getattr(self.stats, k) for k in self.stats.__slots__},
            "cache": {"url": self.cache.url, "up": self.cache.up, "hits": c.hits,
                      "misses": c.misses, "corrupt": c.corrupt, "stores": c.stores,
                      "redis_errors": c.redis_errors, "bypassed": c.bypassed},
            "upstream": self.pool.statistics(),
            "sig_version": self.upstream_version(),
        }

    async def _execute(self, name: str, conn: _Conn) -> tuple[bytes, bool]:
        if name == "PING":
            return b"PONG", True
        if name == "VERSION":
            version = self.upstream_version()
            if not version:
                raise trio.BrokenResourceError("no upstream signature version known yet")
            if self.grace is not None:
                version = self.grace.guest_version(version)
            return version_reply(version), True
        if name == "STATS":
            stats = self.statistics()
            if self.grace is not None:
                stats["grace"] = await self.grace.statistics()
            if self.hot is not None:
                stats["hot"] = self.hot.statistics()
            return json.dumps(stats, separators=(",", ":")).encode(), True
        if name == "INSTREAM":
            async with self._copies:
                return await self._instream(conn)
        if name == "FILDES":
            async with self._copies:
                return await self._fildes(conn)
        return b"UNKNOWN COMMAND", False

    async def _instream(self, conn: _Conn) -> tuple[bytes, bool]:
        # The bytes go to a memory file: the pool scans file descriptors (FILDES to a
        # local clamd, INSTREAM re-read from it otherwise), and it is bounded by max_stream.
        fd = _new_memfd()
        try:
            h = hashlib.sha256()

            def take(piece: bytes) -> None:
                h.update(piece)
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]

            size = await conn.read_instream(self.max_stream, take)
            if size is None:
                return TOO_LONG, False
            _seal(fd)
            verdict = await self.scan(h.hexdigest(), fd, size)
            return reply_for(verdict, "stream"), True
        finally:
            os.close(fd)

    async def _fildes(self, conn: _Conn) -> tuple[bytes, bool]:
        fd = await conn.take_fd()
        if fd is None:
            return NO_FD, False
        try:
            try:
                copy, digest, size = await trio.to_thread.run_sync(
                    _snapshot, fd, self.max_stream, limiter=FILE_READS)
            except _TooBig:
                return f"fd[{fd}]: size limit exceeded. ERROR".encode(), True
            except OSError as err:
                reason = _clean_text(err.strerror or "read error")
                return f"fd[{fd}]: {reason}. ERROR".encode(), True
            try:
                verdict = await self.scan(digest, copy, size)
            finally:
                os.close(copy)
            return reply_for(verdict, f"fd[{fd}]"), True
        finally:
            os.close(fd)

    # --- the cache logic ------------------------------------------------------

    async def scan(self, digest: str, fd: int, size: int) -> Verdict:
        """The verdict for the bytes in `fd` (whose SHA-256 is `digest`), as guests may
        take it: a clean made under another signature version than VERSION now names
        is an error (see `_as_current`)."""
        return self._as_current(await self._scan(digest, fd, size))

    def _as_current(self, verdict: Verdict) -> Verdict:
        """A guest labels each verdict with the version VERSION gave it: a clean from an
        upstream with other (older) signatures, reached by failover or a hedged scan,
        would be kept as clean under the newest ones. Infected stands under any version;
        a clean of another version is an error (the guest's fail mode, then a rescan)."""
        if not verdict.is_clean:
            return verdict
        current = self.upstream_version()
        if not current or verdict.sig_version == current:
            return verdict
        self.stats.other_version += 1
        return Verdict.error(f"scanned under signature version {verdict.sig_version}, "
                             f"not the current {current}", verdict.appliance)

    async def _scan(self, digest: str, fd: int, size: int) -> Verdict:
        self.stats.requests += 1
        if self.hot is not None:
            self.hot.opened(digest, fd, size)
        version = self.upstream_version()
        if not version:
            return await self._upstream(fd, size)  # nothing to key a verdict on
        key = (digest, version)
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.verdict is not None:
                self.stats.shared_local += 1
                return flight.verdict
        flight = self._flights[key] = _Flight()
        try:
            flight.verdict = await self._resolve(digest, version, fd, size)
            return flight.verdict
        finally:
            flight.done.set()
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def rescan(self, digest: str, fd: int, size: int) -> Verdict:
        """A carried-over content's own verdict under the current version (no grace)."""
        return await self._resolve(digest, self.upstream_version(), fd, size, carry=False)

    async def rescan_kept(self, digest: str, path: str) -> Verdict | None:
        """Rescan a kept copy of `digest` (scanner.cache_hot) under the current version;
        None if the copy is not those bytes (re-hashed while read into a sealed copy)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            copy, got, size = await trio.to_thread.run_sync(
                _snapshot, fd, self.max_stream, limiter=FILE_READS)
        except (OSError, _TooBig):
            return None
        finally:
            os.close(fd)
        try:
            return await self.rescan(digest, copy, size) if got == digest else None
        finally:
            os.close(copy)

    async def _resolve(self, digest: str, version: str, fd: int, size: int, *,
                       carry: bool = True) -> Verdict:
        token: str | None = None
        try:
            hit = await self.cache.get(digest, version)
            if hit is not None:
                self.stats.served_from_cache += 1
                return hit
            if carry and self.grace is not None:
                carried = await self.grace.carry_over(digest, version, fd, size)
                if carried is not None:
                    self.stats.carried_over += 1
                    return carried
            token = await self.cache.try_lock(digest, version)
            if token is None:
                shared = await self._wait_peer(digest, version)
                if shared is not None:
                    self.stats.shared_remote += 1
                    return shared
                token = await self.cache.try_lock(digest, version)
        except CacheDown:
            self.stats.uncached += 1
            return await self._upstream(fd, size)
        try:
            if token is not None:
                # Another proxy may have stored the verdict and let go of the lock
                # between our miss and our lock (its put comes before its unlock):
                # look once more before scanning.
                try:
                    stored = await self.cache.get(digest, version, count=False)
                except CacheDown:
                    stored = None
                if stored is not None:
                    self.stats.shared_remote += 1
                    return stored
            verdict = await self._upstream(fd, size)
            if not verdict.is_error:
                try:
                    # stored under the version that scanned it: an update may have landed
                    await self.cache.put(digest, verdict)
                except CacheDown:
                    self.stats.store_failures += 1
            return verdict
        finally:
            if token is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(CacheDown):
                    await self.cache.unlock(digest, version, token)

    async def _wait_peer(self, digest: str, version: str) -> Verdict | None:
        """Wait (at most the lock TTL) for the proxy holding the lock to store its verdict."""
        interval = POLL_FIRST
        with trio.move_on_after(self.cache.lock_ttl):
            while True:
                await trio.sleep(interval)
                interval = min(POLL_MAX, interval * 2)
                verdict = await self.cache.get(digest, version, count=False)
                if verdict is not None:
                    return verdict
                if not await self.cache.locked(digest, version):
                    # released without a verdict (an upstream error): one last look
                    return await self.cache.get(digest, version, count=False)
        return None

    async def _upstream(self, fd: int, size: int) -> Verdict:
        self.stats.upstream_scans += 1
        return await self.pool.scan_fd(fd, size=size)
