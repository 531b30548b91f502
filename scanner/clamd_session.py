"""Reused clamd connections for FILDES scans: IDSESSION, one request at a time.

A new unix connection per scan cost the drain about a fifth of its server
time (socket, connect, accept on clamd's side, close: py-spy on
`bench/drain.py --scale`), more than the scan of a small file itself. So a
FILDES scan borrows an idle session connection (`zIDSESSION`), sends one
command on it, reads its one reply and gives the connection back.

Invariants (what keeps a reused connection from answering for another file):
- A connection carries at most one request at a time, and goes back to the
  idle list only after the complete reply to that request arrived and was a
  verdict (clean or infected). A request that was cancelled, failed, or got
  an error reply closes its connection: a late reply can never be read as the
  answer to a later request.
- Every reply must carry the request number clamd gives it (1, 2, ... per
  session); any other number closes the connection with an error.
- A reused connection that answers nothing at all (the appliance closed it:
  its idle timeout, a restart) is retried once on a fresh connection, which
  is safe because no verdict came; every other failure is the caller's.
- Idle connections older than `MAX_IDLE_AGE` are closed rather than reused,
  well within clamd's default `IdleTimeout` (30 s).
- An idle connection with anything to read (a reply nobody asked for yet, a
  replayed one, the appliance's close) is closed rather than reused: a reply
  already waiting when a request goes out cannot be its answer, yet it would
  carry the number that request gets (tests/t1_attack17_session_test.py).

Pipelined (`fildes_many`, the drain's batches): many FILDES requests go out on
one connection before any reply is read, as `clamdscan --multiscan --fdpass`
does; clamd scans them on its threads and answers each with its request number,
in any order. Each reply must name a request of this batch not answered yet;
the connection is kept only if every request got a verdict. The connection is
a plain non-blocking socket: a batch costs one wait per burst of replies, not
a few trio checkpoints per file.
"""

from __future__ import annotations

import array
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from vfile.scanner import clamd_proto as proto
from vfile.scanner import fdsend
from vfile.scanner.net import connect
from vfile.scanner.urls import Address
from vfile.scanner.verdict import ApplianceError, Outcome

#: idle session connections kept per appliance (drain and on-open scans together)
MAX_IDLE = 32
#: an idle connection older than this is closed, not reused (clamd's IdleTimeout: 30 s)
MAX_IDLE_AGE = 10.0
_FILDES = proto.command("FILDES")


class NoReply(ApplianceError):
    """The connection failed before a single byte of the reply arrived."""


@dataclass(slots=True, eq=False)
class _Session:
    stream: trio.SocketStream
    #: the request number of the next reply
    next_id: int = 1
    idle_since: float = 0.0

    def close(self) -> None:
        # Synchronous: a session is dropped from `finally` blocks, cancelled or not.
        self.stream.socket.close()


async def read_reply(stream: trio.SocketStream) -> bytes:
    """One reply (without terminator); NoReply if the connection ends before any byte."""
    buf = bytearray()
    # The reply comes once clamd scanned the file, never at once: wait for it before the
    # first read rather than after a read that finds nothing (a syscall per scan).
    await trio.lowlevel.wait_readable(stream.socket)
    while True:
        try:
            split = proto.split_reply(buf)
        except proto.ProtocolError as err:
            raise ApplianceError(str(err)) from None
        if split is not None:
            return split[0]
        try:
            data = await stream.receive_some(4096)
        except (trio.BrokenResourceError, OSError) as err:
            if not buf:
                raise NoReply(f"connection lost: {err}") from None
            raise ApplianceError(f"connection lost: {err}") from None
        if not data:
            if not buf:
                raise NoReply("connection closed without a reply")
            raise ApplianceError("connection closed mid-reply")
        buf += data


async def send_fildes(stream: trio.SocketStream, fd: int) -> None:
    """`zFILDES` and the descriptor in one message (with the dummy byte clamdscan sends)."""
    fds = array.array("i", [fd]).tobytes()
    try:
        sent = await stream.socket.sendmsg([_FILDES, b"\0"],
                                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        if sent < len(_FILDES) + 1:  # a unix socket sends 9 bytes whole; be safe anyway
            await stream.send_all((_FILDES + b"\0")[sent:])
    except (trio.BrokenResourceError, OSError) as err:
        raise NoReply(f"FILDES send failed: {err}") from None


@dataclass(slots=True, eq=False)
class _Plain:
    """A pipelined session's connection: a plain non-blocking socket (see `fildes_many`)."""
    sock: socket.socket
    next_id: int = 1
    idle_since: float = 0.0

    def close(self) -> None:
        self.sock.close()


def _unasked(fileno: int) -> bool:
    """Whether an idle connection has something to read (data or its end): not reusable."""
    poll = select.poll()
    poll.register(fileno, select.POLLIN | select.POLLPRI)
    return bool(poll.poll(0))


def _lost(got: int, why: str) -> ApplianceError:
    return NoReply(why) if not got else ApplianceError(why)


async def _send_plain(sock: socket.socket, fd: int) -> None:
    """`zFILDES`, its dummy byte and `fd` in one message, waiting only if the socket is full."""
    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
    while True:
        try:
            sent = sock.sendmsg([_FILDES, b"\0"], fds)
            break
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
    rest = (_FILDES + b"\0")[sent:]
    while rest:  # a unix socket takes 9 bytes whole; be safe anyway
        await trio.lowlevel.wait_writable(sock)
        rest = rest[sock.send(rest):]


async def send_fildes_many(sock: socket.socket, fds: Sequence[int]) -> None:
    """FILDES of each of `fds`, in order: in `sendmmsg` calls (scanner/fdsend.py, one
    syscall for the batch), or one `sendmsg` each where that cannot be called."""
    i = 0
    while fdsend.available() and i < len(fds):
        try:
            sent, partial = fdsend.send_many(sock, fds[i:])
        except BlockingIOError:
            sent, partial = 0, 0
        i += sent
        if partial:  # the next one went in part, its descriptor with its first bytes
            i += 1
            rest = fdsend.PAYLOAD[partial:]
            while rest:
                await trio.lowlevel.wait_writable(sock)
                rest = rest[sock.send(rest):]
        elif i < len(fds) and not sent:
            await trio.lowlevel.wait_writable(sock)  # the socket is full
    for fd in fds[i:]:
        await _send_plain(sock, fd)


async def read_replies(sock: socket.socket, first: int, n: int) -> list[bytes]:
    """The replies to requests `first` .. `first + n - 1` (without their numbers), in
    request order, whatever order they came in; NoReply if none came at all."""
    replies: list[bytes | None] = [None] * n
    got = 0
    buf = b""
    while got < n:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError as err:
            raise _lost(got + len(buf), f"connection lost: {err}") from None
        if not data:
            raise _lost(got + len(buf), "connection closed before every reply came")
        buf += data
        while True:
            try:
                split = proto.split_reply(buf)
            except proto.ProtocolError as err:
                raise ApplianceError(str(err)) from None
            if split is None:
                break
            reply, buf = split
            number, sep, rest = reply.partition(b": ")
            i = int(number) - first if sep and number.isdigit() else -1
            if not 0 <= i < n or replies[i] is not None:
                raise ApplianceError(f"session reply {reply[:40]!r} is not to a request "
                                     f"of this batch ({first}..{first + n - 1})")
            replies[i] = rest
            got += 1
    if buf:
        raise ApplianceError(f"unasked-for reply {buf[:40]!r}")
    return [r for r in replies if r is not None]


def _is_verdict(reply: bytes) -> bool:
    try:
        outcome, _ = proto.parse_scan_reply(reply)
    except proto.ProtocolError:
        return False  # the caller reports it; the connection is not reused
    return outcome in (Outcome.CLEAN, Outcome.INFECTED)


def _detach(session: _Session) -> socket.socket:
    """The session's connection as a plain non-blocking socket."""
    sock = socket.socket(fileno=session.stream.socket.detach())
    sock.setblocking(False)
    return sock


class Sessions:
    """Idle IDSESSION connections to one appliance; `fildes` scans on one of them."""

    def __init__(self, address: Address, *, max_idle: int = MAX_IDLE,
                 max_idle_age: float = MAX_IDLE_AGE) -> None:
        self._address = address
        self._idle: list[_Session] = []
        self._plain: list[_Plain] = []
        self._max_idle = max_idle
        self._max_idle_age = max_idle_age
        self.opened = 0  # connections made (for tests and statistics)

    def _checkout(self) -> _Session | None:
        now = time.monotonic()
        while self._idle:
            session = self._idle.pop()  # the newest: the least likely to have timed out
            if now - session.idle_since <= self._max_idle_age \
                    and not _unasked(session.stream.socket.fileno()):
                return session
            session.close()
        return None

    def _checkin(self, session: _Session) -> None:
        if len(self._idle) >= self._max_idle:
            session.close()
            return
        session.idle_since = time.monotonic()
        self._idle.append(session)

    async def _open(self) -> _Session:
        try:
            stream = await connect(self._address)
        except OSError as err:
            raise ApplianceError(f"cannot connect: {err.strerror or err}") from None
        self.opened += 1
        try:
            await stream.send_all(proto.command("IDSESSION"))
        except BaseException as err:
            stream.socket.close()
            if isinstance(err, (trio.BrokenResourceError, OSError)):
                raise ApplianceError(f"IDSESSION send failed: {err}") from None
            raise
        return _Session(stream)

    async def fildes(self, fd: int) -> bytes:
        """The reply to FILDES of `fd` (without its request number); the connection is
        kept for reuse only if the reply is a verdict (see the module invariants)."""
        session = self._checkout()
        if session is not None:
            try:
                return await self._request(session, fd)
            except NoReply:
                pass  # closed while idle (or the appliance went away): once more, fresh
        return await self._request(await self._open(), fd)

    async def _request(self, session: _Session, fd: int) -> bytes:
        keep = False
        try:
            await send_fildes(session.stream, fd)
            reply = await read_reply(session.stream)
            number, sep, rest = reply.partition(b": ")
            if not sep or number != str(session.next_id).encode():
                raise ApplianceError(f"session reply {reply[:40]!r} is not to request "
                                     f"{session.next_id}")
            session.next_id += 1
            keep = _is_verdict(rest)
            return rest
        finally:
            if keep:
                self._checkin(session)
            else:
                session.close()

    async def fildes_many(self, fds: Sequence[int]) -> list[bytes]:
        """The replies to FILDES of each of `fds` (in order, without request numbers),
        pipelined on one session connection (see the module docstring)."""
        now = time.monotonic()
        while self._plain:
            conn = self._plain.pop()
            if now - conn.idle_since > self._max_idle_age or _unasked(conn.sock.fileno()):
                conn.close()
                continue
            try:
                return await self._pipelined(conn, fds)
            except NoReply:
                break  # closed while idle (or the appliance went away): once more, fresh
        session = await self._open()
        return await self._pipelined(_Plain(_detach(session)), fds)

    async def _pipelined(self, conn: _Plain, fds: Sequence[int]) -> list[bytes]:
        keep = False
        try:
            try:
                await send_fildes_many(conn.sock, fds)
            except OSError as err:
                raise NoReply(f"FILDES send failed: {err}") from None
            replies = await read_replies(conn.sock, conn.next_id, len(fds))
            conn.next_id += len(fds)
            keep = all(_is_verdict(r) for r in replies)
            return replies
        finally:
            if keep and len(self._plain) < self._max_idle:
                conn.idle_since = time.monotonic()
                self._plain.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        while self._plain:
            self._plain.pop().close()
