"""The embedded default's client: the pool calls the built-in engine in this process.

With no appliance configured, a scanning mount runs vfile's built-in appliance
(scanner/builtin.py) itself. It used to serve clamd's protocol on a unix socket
in this same process, and the pool spoke clamd to it: a close scan of a small
file then cost ~0.67 ms of the trio thread (client, socket server, FILDES, the
digest's thread hop), as much as a whole unscanned create (README, "Creates
under scanning"). This client gives the pool what it uses of a client (a scan
of an fd, pipelined scans for the drain, probe and ping) by calling the engine.
Configured appliances (clamd://, icap://, a separate `vfile appliance serve`)
do not use it.

Invariants, as for the socket clients:
- A file is read on a worker thread (`FILE_READS`): the source may be slow or
  frozen. The one exception is provably bounded: a file of at most `INLINE_MAX`
  bytes all in the page cache (a close scan's pages were just written through
  the mount), read with RWF_NOWAIT, which fails instead of waiting for I/O.
  The caller's cancel scope bounds the thread's wait (abandon_on_cancel); the
  thread reads dups of the caller's descriptors and closes them, so an
  abandoned read never touches a descriptor number the caller closed and reused.
- A failing engine (any exception) or a result that is no valid signature name
  raises `ApplianceError`, which the pool makes a failure and an error verdict:
  never clean. A source read error is an ERROR outcome, not the engine's fault.
- No timeouts here. The engine's fault (scanner.faults: `VFILE_EMBEDDED_FAULT`
  at mount, or `BuiltinAppliance.set_fault`) acts as on its socket: refuse and
  reset fail every request, blackhole never answers, delay holds every answer,
  slowscan the scans', garbage makes every scan result malformed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import trio

from vfile.scanner import clamd_proto as proto
from vfile.scanner.builtin import BuiltinAppliance
from vfile.scanner.net import FILE_READS
from vfile.scanner.urls import Address, ApplianceURL
from vfile.scanner.verdict import ApplianceError, Outcome

log = logging.getLogger(__name__)

#: a mount's environment may set the embedded engine's fault (tests, drills)
FAULT_ENV = "VFILE_EMBEDDED_FAULT"
URL = ApplianceURL("embedded", Address(), text="embedded")
_GARBAGE = "\x16garbage: OK?"  # what a `garbage` fault makes of every scan result
#: a file up to this size whose pages are all in the page cache is judged on the trio
#: thread (`_cached`): such a read cannot wait for I/O, and hashing 64 KiB (md5 and
#: sha256) takes ~0.2 ms; anything else goes to a worker thread
INLINE_MAX = 64 << 10


def _cached(fd: int, limit: int = INLINE_MAX) -> bytes | None:
    """The whole content of `fd` if it is at most `limit` bytes, all in the page cache;
    else None. Reads with RWF_NOWAIT: the kernel answers EAGAIN instead of waiting for
    the disk, and a filesystem that cannot promise that (FUSE, NFS) EOPNOTSUPP."""
    parts: list[bytes] = []
    offset = 0
    while offset <= limit:  # every turn reads at least one byte: at most limit + 1 turns
        buf = bytearray(limit + 1 - offset)
        try:
            n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except OSError:
            return None  # not cached (EAGAIN), cannot tell (EOPNOTSUPP), or unreadable
        if n == 0:
            return b"".join(parts)
        parts.append(bytes(buf[:n]))
        offset += n
    return None


def _judge(engine: BuiltinAppliance, fd: int, stop: threading.Event) -> str | OSError | None:
    """The engine's result for `fd`, or the read error."""
    try:
        return engine.match_fd(fd, stop)
    except OSError as err:
        return err


class _Dups:
    """Duplicates of the caller's descriptors, closed exactly once: by the worker thread
    once it has taken them, else (the wait cancelled before it started) by the caller."""

    def __init__(self, fds: Sequence[int]) -> None:
        self.fds: list[int] = []
        self._lock = threading.Lock()
        self._owned = False  # taken by a thread, or closed
        #: set once the caller stopped waiting (cancelled, or done): an abandoned thread
        #: stops reading at its next chunk and gives its FILE_READS token back, so huge
        #: files cannot hold every token after their scans timed out
        self.stop = threading.Event()
        try:
            for fd in fds:
                self.fds.append(os.dup(fd))
        except OSError:
            self.close()
            raise

    def take(self) -> bool:
        with self._lock:
            taken, self._owned = not self._owned, True
            return taken

    def close(self) -> None:
        if self.take():
            for fd in self.fds:
                os.close(fd)

    def judge(self, engine: BuiltinAppliance) -> list[str | OSError | None]:
        """On a worker thread: every file's result; the descriptors closed."""
        if not self.take():
            return []  # the caller gave up before the thread started, and closed them
        try:
            return [_judge(engine, fd, self.stop) for fd in self.fds]
        finally:
            for fd in self.fds:
                os.close(fd)


class EmbeddedClient:
    def __init__(self, engine: BuiltinAppliance) -> None:
        self.engine = engine
        self.url = URL

    async def _fault(self, scan: bool) -> bool:
        """Apply the engine's fault; True when the result is to be garbage."""
        fault = self.engine.fault
        if fault is None:
            return False
        if fault.kind in ("refuse", "reset"):
            raise ApplianceError(f"embedded engine: {fault.kind} (fault)")
        if fault.kind == "blackhole":
            await trio.sleep_forever()
        if fault.kind == "delay" or (fault.kind == "slowscan" and scan):
            await trio.sleep(fault.delay)
        return fault.kind == "garbage"

    async def ping(self) -> None:
        await self._fault(scan=False)

    async def probe(self) -> str:
        """The signature version, as the engine's VERSION reply on its socket gives it
        (verdicts stored under it stay valid whichever way the engine was asked)."""
        await self._fault(scan=False)
        try:
            return proto.parse_version(self.engine.version().encode()).signature_version
        except proto.ProtocolError as err:
            raise ApplianceError(f"embedded engine: {err}") from None

    @property
    def pipelines(self) -> bool:
        return True  # `scan_fds`: many files, one thread hop

    async def scan_fd(self, fd: int, *, size: int, limit: int | None = None) -> tuple[Outcome, str]:
        """Scan the open regular file `fd` (the whole file: the engine hashes it all)."""
        del limit  # a hash signature needs the whole content
        if size <= INLINE_MAX:
            data = _cached(fd)
            if data is not None:
                garbage = await self._fault(scan=True)
                return self.judge(data, garbage=garbage)
        return (await self.scan_fds([fd]))[0]

    def judge(self, data: bytes, *, garbage: bool = False,
              sha256: bytes | None = None) -> tuple[Outcome, str]:
        """The engine's outcome for the whole content `data`, at once (no fault applied:
        the caller does, or takes this way only with none set); `ApplianceError` if the
        engine fails or gives no valid result. `sha256`: the digest of `data`, if known."""
        try:
            result = self.engine.match_data(data, sha256)
        except Exception as err:  # the engine failed: no verdict, never clean
            log.warning("embedded engine failed: %r", err)
            raise ApplianceError(f"embedded engine failed: {err!r}") from None
        return self._outcome(_GARBAGE if garbage else result)

    async def scan_fds(self, fds: Sequence[int]) -> list[tuple[Outcome, str]]:
        garbage = await self._fault(scan=True)
        try:
            dups = _Dups(fds)
        except OSError as err:
            raise ApplianceError(f"embedded engine: cannot pass the file: {err}") from None
        try:
            results = await trio.to_thread.run_sync(dups.judge, self.engine,
                                                    abandon_on_cancel=True, limiter=FILE_READS)
        except Exception as err:  # the engine failed: no verdict, never clean
            log.warning("embedded engine failed: %r", err)
            raise ApplianceError(f"embedded engine failed: {err!r}") from None
        finally:
            dups.stop.set()  # an abandoned thread stops reading (t5_attack17_embedded_test)
            dups.close()  # unless the thread took them (cancelled before it started)
        if len(results) != len(fds):
            raise ApplianceError("embedded engine: results missing")
        return [self._outcome(_GARBAGE if garbage else r) for r in results]

    @staticmethod
    def _outcome(result: object) -> tuple[Outcome, str]:
        if isinstance(result, OSError):
            return Outcome.ERROR, f"cannot read file: {result.strerror or result}"
        if result is None:
            return Outcome.CLEAN, ""
        if isinstance(result, str) and proto.is_signature_name(result):
            return Outcome.INFECTED, result
        raise ApplianceError(f"embedded engine: malformed result {str(result)[:80]!r}")
