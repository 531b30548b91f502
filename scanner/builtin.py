"""The built-in appliance: a small clamd-protocol server with hash signatures.

Speaks PING, VERSION, INSTREAM, FILDES (unix sockets only, the descriptor
arrives as SCM_RIGHTS ancillary data) and IDSESSION/END, in both the
`zCMD\\0` and `nCMD\\n` forms; always detects EICAR; matches `.hdb`/`.hsb`
hash signatures (scanner.signatures). Its VERSION is
`vfile-builtin 1/<signature version>/<load time>`, so the signature version
changes whenever reloaded signatures differ.

Faults (scanner.faults) can be set at start and switched while running with
`set_fault()`; `refuse` closes the listening socket and re-opens it on the
same address when the fault is lifted.

Invariants: a connection handler never outlives `serve()` (all run in its
nursery); every received descriptor is closed; a stream longer than
`max_stream` is answered `INSTREAM size limit exceeded. ERROR`, never OK.
"""

from __future__ import annotations

import array
import contextlib
import errno
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from vfile.scanner import clamd_proto as proto
from vfile.scanner.faults import GARBAGE, Fault
from vfile.scanner.net import FILE_READS, FaultSwitch, reset, serve_switchable
from vfile.scanner.signatures import EICAR_MAX, Signatures, load
from vfile.scanner.urls import parse_listen_url

log = logging.getLogger(__name__)

ENGINE = "vfile-builtin 1"
#: default StreamMaxLength, as clamd's 100M default would be generous for a demo
DEFAULT_MAX_STREAM = 64 * 1024 * 1024
_FD_SIZE = array.array("i").itemsize


@dataclass(slots=True)
class _Digest:
    md5: hashlib._Hash = field(default_factory=hashlib.md5)
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    head: bytearray = field(default_factory=bytearray)
    size: int = 0

    def update(self, data: bytes) -> None:
        if len(self.head) <= EICAR_MAX:
            self.head += data[: EICAR_MAX + 1 - len(self.head)]
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)


def _digest_fd(fd: int, stop: threading.Event | None = None) -> _Digest:
    """`stop` set: the caller gave up; stop reading (InterruptedError) rather than hold a
    read token and a core for as long as the file takes (a 1 TiB sparse file: an hour)."""
    d = _Digest()
    offset = 0
    while True:
        if stop is not None and stop.is_set():
            raise InterruptedError(errno.EINTR, "scan abandoned by its caller")
        data = os.pread(fd, 1 << 20, offset)
        if not data:
            return d
        d.update(data)
        offset += len(data)


NO_FD = b"FILDES: didn't receive file descriptor. ERROR"
#: clamd's reply to an INSTREAM past its StreamMaxLength (the connection then ends)
TOO_LONG = b"INSTREAM size limit exceeded. ERROR"


class _Conn:
    """One client connection: buffered reads that also collect passed fds."""

    def __init__(self, stream: trio.SocketStream, unix: bool) -> None:
        self.stream = stream
        self.unix = unix
        self.buf = bytearray()
        self.fds: list[int] = []

    async def fill(self) -> bool:
        """Read more into buf; False at EOF."""
        if self.unix:
            data, anc, _flags, _addr = await self.stream.socket.recvmsg(
                65536, socket.CMSG_SPACE(8 * _FD_SIZE))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
                    self.fds.extend(fds)
        else:
            data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def take_fd(self) -> int | None:
        """The descriptor a FILDES command passed (ours to close), or None if none came.
        It travels with at least one dummy byte, which is consumed here."""
        if not self.unix:
            return None
        while not self.fds:
            if not await self.fill():
                return None
        if not self.buf and not await self.fill():
            raise trio.BrokenResourceError("client closed")
        del self.buf[:1]
        return self.fds.pop(0)

    async def read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not await self.fill():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_instream(self, max_stream: int, take: Callable[[bytes], None]) -> int | None:
        """An INSTREAM body's chunks, each piece handed to `take` as it arrives, up to
        the zero-length chunk: its size; None (the rest unread) once a chunk would take
        the stream past `max_stream` or is over proto.MAX_CHUNK."""
        size = 0
        while True:
            header = await self.read_exact(4)
            if header is None:
                raise trio.BrokenResourceError("client closed mid-stream")
            length = proto.parse_chunk_length(header)
            if length == 0:
                return size
            if size + length > max_stream or length > proto.MAX_CHUNK:
                return None
            while length:
                if not self.buf and not await self.fill():
                    raise trio.BrokenResourceError("client closed mid-stream")
                piece = bytes(self.buf[:length])
                del self.buf[: len(piece)]
                take(piece)
                size += len(piece)
                length -= len(piece)

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class BuiltinAppliance:
    def __init__(self, signatures_dir: str | None = None, fault: Fault | None = None, *,
                 max_stream: int = DEFAULT_MAX_STREAM) -> None:
        self.signatures_dir = signatures_dir
        self.max_stream = max_stream
        self._sigs: Signatures = load(signatures_dir)
        self._loaded = time.strftime("%a %b %d %H:%M:%S %Y")
        self._switch = FaultSwitch(fault)
        self.connections = 0

    @property
    def fault(self) -> Fault | None:
        return self._switch.fault

    @property
    def signatures(self) -> Signatures:
        return self._sigs

    def version(self) -> str:
        return f"{ENGINE}/{self._sigs.version}/{self._loaded}"

    def set_fault(self, fault: Fault | None) -> None:
        log.info("built-in appliance fault: %s", fault or "none")
        self._switch.set(fault)

    def reload(self) -> None:
        """Reload signatures; raises SignatureError (keeping the old ones) if they do not load."""
        self._sigs = load(self.signatures_dir)
        self._loaded = time.strftime("%a %b %d %H:%M:%S %Y")
        log.info("signatures reloaded: version %s", self._sigs.version)

    async def serve(self, listen_url: str, *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `started()` with the bound URL (real port for port 0)."""
        address = parse_listen_url(listen_url)

        async def handler(stream: trio.SocketStream) -> None:
            self.connections += 1
            log.debug("client connection %d", self.connections)  # tests count them
            await self._handle(stream, address.is_unix)

        await serve_switchable(address, self._switch, handler, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream, unix: bool) -> None:
        conn = _Conn(stream, unix)
        try:
            async with stream:
                await self._session(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            log.debug("client connection ended: %s", err)
        finally:
            conn.close_fds()

    async def _session(self, conn: _Conn) -> None:
        fault = self._switch.fault
        if fault is not None and fault.kind == "reset":
            reset(conn.stream)
            return
        session_id = 0
        in_session = False
        while True:
            try:
                split = proto.split_command(conn.buf)
            except proto.ProtocolError:
                await conn.stream.send_all(b"UNKNOWN COMMAND\n")
                return
            if split is None:
                if not await conn.fill():
                    return
                continue
            name, term, rest = split
            conn.buf = bytearray(rest)
            if self._switch.refusing:
                # A refusing appliance is down: its session connections end too (clients
                # keep idle sessions), as a killed clamd's would.
                return
            if name == "IDSESSION":
                in_session = True
                continue
            if name == "END":
                return
            session_id += 1
            reply, keep_open = await self._execute(name, conn)
            fault = self._switch.fault
            if fault is not None:
                if fault.kind == "blackhole":
                    while await conn.fill():  # swallow everything, answer nothing
                        conn.buf.clear()
                    return
                if fault.kind == "reset":
                    reset(conn.stream)
                    return
                if fault.kind == "delay" or (fault.kind == "slowscan"
                                             and name in ("INSTREAM", "FILDES")):
                    await trio.sleep(fault.delay)
                if fault.kind == "garbage":
                    reply = GARBAGE
            prefix = f"{session_id}: " if in_session else ""
            await conn.stream.send_all(prefix.encode() + reply + term.encode())
            if not in_session or not keep_open:
                return

    async def _execute(self, name: str, conn: _Conn) -> tuple[bytes, bool]:
        if name == "PING":
            return b"PONG", True
        if name == "VERSION":
            return self.version().encode(), True
        if name == "INSTREAM":
            return await self._instream(conn)
        if name == "FILDES":
            return await self._fildes(conn)
        return b"UNKNOWN COMMAND", False

    def _match(self, d: _Digest) -> str | None:
        return self._sigs.match(d.size, bytes(d.head), d.md5.hexdigest(), d.sha256.hexdigest())

    def match_fd(self, fd: int, stop: threading.Event | None = None) -> str | None:
        """The signature the content of `fd` matches, or None. Blocking (reads the whole
        file): for a worker thread (scanner/embedded.py); OSError if it cannot be read,
        InterruptedError once `stop` is set."""
        return self._match(_digest_fd(fd, stop))

    def match_data(self, data: bytes, sha256: bytes | None = None) -> str | None:
        """The signature the whole content `data` matches, or None. `sha256`: the digest
        of `data`, if the caller has it (a close scan hashed it: vfile.filter.contenthash)."""
        if sha256 is None:
            d = _Digest()
            d.update(data)
            return self._match(d)
        return self._sigs.match(len(data), data[: EICAR_MAX + 1], hashlib.md5(data).hexdigest(),
                                sha256.hex())

    def _verdict(self, d: _Digest, subject: str) -> bytes:
        sig = self._match(d)
        return f"{subject}: {sig} FOUND".encode() if sig else f"{subject}: OK".encode()

    async def _instream(self, conn: _Conn) -> tuple[bytes, bool]:
        d = _Digest()
        if await conn.read_instream(self.max_stream, d.update) is None:
            return TOO_LONG, False
        return self._verdict(d, "stream"), True

    async def _fildes(self, conn: _Conn) -> tuple[bytes, bool]:
        fd = await conn.take_fd()
        if fd is None:
            return NO_FD, False
        try:
            d = await trio.to_thread.run_sync(_digest_fd, fd, limiter=FILE_READS)
        except OSError as err:
            return f"fd[{fd}]: {err.strerror}. ERROR".encode(), True
        finally:
            os.close(fd)
        return self._verdict(d, f"fd[{fd}]"), True

