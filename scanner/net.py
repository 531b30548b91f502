"""Sockets for clients and servers: connect to and listen on an `Address`.

Invariants: unix listeners replace only a stale *socket* at their path (never
a regular file); every stream returned is owned by the caller, who closes it.
Reading file content for a scan goes through one named CapacityLimiter, so a
burst of large scans cannot starve other thread work in the process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable

import trio

from vfile.scanner.faults import Fault
from vfile.scanner.tcppeer import check_tcp_listener
from vfile.scanner.urls import Address

#: file reads for INSTREAM/ICAP bodies and hashing in the built-in appliance
FILE_READS = trio.CapacityLimiter(8)
#: reads up to this size happen inline: a pread from the page cache is
#: cheaper than a hop to a worker thread (measured in bench/scan.py)
INLINE_READ = 256 * 1024


async def connect(address: Address) -> trio.SocketStream:
    if address.is_unix:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(address.path)
            _check_listener(sock, address.path)
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)
    stream = await trio.open_tcp_stream(address.host, address.port)
    try:
        # Anyone may bind a local port while the appliance is down (x24): root or us only.
        check_tcp_listener(stream.socket)  # type: ignore[arg-type]
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def _check_listener(sock: trio.socket.SocketType, path: str) -> None:
    """Whoever listens at a unix `path` gets descriptors of the files scanned (FILDES)
    and is believed: it must be root, us, or the owner of the socket's directory (an
    appliance's own, as clamd's /run/clamav). In a directory others may write (clamd's
    sample /tmp/clamd.socket) any user could bind the name while the appliance was
    down (x23, tests/t4_appliance_peer23_test.py). OSError(EACCES): an appliance
    error, so the fail mode applies."""
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid in (0, os.geteuid()):
        return
    try:
        owner = os.stat(os.path.dirname(os.path.abspath(path))).st_uid
    except OSError:
        owner = -1
    if uid != owner:
        raise OSError(errno.EACCES, f"{path} is served by uid {uid}, neither root, us nor "
                      "its directory's owner: not an appliance of ours")


async def open_listener(address: Address) -> tuple[trio.SocketListener, Address]:
    """Listen on `address`; returns the listener and the bound address (real port)."""
    if address.is_unix:
        try:
            if stat.S_ISSOCK(os.lstat(address.path).st_mode):
                os.unlink(address.path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(address.path)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return trio.SocketListener(sock), address
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((address.host, address.port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    return trio.SocketListener(sock), Address(host=host, port=port)


def reset(stream: trio.SocketStream) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    stream.socket.close()


async def pread(fd: int, length: int, offset: int) -> bytes:
    if length <= INLINE_READ:
        return os.pread(fd, length, offset)
    return await trio.to_thread.run_sync(os.pread, fd, length, offset, limiter=FILE_READS)


class FaultSwitch:
    """The current fault of a server, with a way to wait for it to change."""

    def __init__(self, fault: Fault | None) -> None:
        self.fault = fault
        self._changed = trio.Event()

    def set(self, fault: Fault | None) -> None:
        self.fault = fault
        self._changed.set()
        self._changed = trio.Event()

    @property
    def refusing(self) -> bool:
        return self.fault is not None and self.fault.kind == "refuse"

    async def wait_changed(self) -> None:
        await self._changed.wait()


async def serve_switchable(address: Address, switch: FaultSwitch,
                           handler: Callable[[trio.SocketStream], Awaitable[None]], *,
                           task_status: trio.TaskStatus[str]) -> None:
    """Accept connections into handler tasks; close the listener while `refuse` is set.

    `started()` reports the bound address as a listen URL. While refusing,
    the listener is closed (and a unix socket path removed), so clients get
    ECONNREFUSED/ENOENT; when lifted it listens again on the same address.
    Handlers run in this function's nursery and end with it.
    """
    # bind first even when refusing, so port 0 resolves to a real port to report
    listener: trio.SocketListener | None
    listener, address = await open_listener(address)
    task_status.started(str(address))
    try:
        async with trio.open_nursery() as handlers:
            while True:
                if switch.refusing:
                    if listener is not None:
                        await listener.aclose()
                        listener = None
                        if address.is_unix:
                            with contextlib.suppress(OSError):
                                os.unlink(address.path)
                    await switch.wait_changed()
                    continue
                if listener is None:
                    listener, address = await open_listener(address)
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(_accept_loop, listener, handlers, handler)
                    while not switch.refusing:
                        await switch.wait_changed()
                    accepting.cancel_scope.cancel()
    finally:
        if listener is not None:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        if address.is_unix:
            with contextlib.suppress(OSError):
                os.unlink(address.path)


#: accept() errors that mean "out of descriptors or memory, for now": the
#: listener waits and retries (as trio.serve_listeners does) instead of dying,
#: which would take an embedding process (a vfile mount) down with it.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF = 0.1


async def _accept_loop(listener: trio.SocketListener, handlers: trio.Nursery,
                       handler: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as err:
            if err.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            await trio.sleep(ACCEPT_BACKOFF)
            continue
        handlers.start_soon(handler, stream)
