"""The control plane's server: one unix socket per mount, served under trio.

The wire format, socket naming, runtime directories and the client live in
`vfile.control` (trio-free, so the command line starts fast); this module is
only what a running mount needs.

Invariants:
- Only root and the mount's owner are served. The socket itself is
  world-connectable (0666) on purpose: everyone else gets a clear refusal that
  names their uid, instead of a bare EACCES from connect().
- The uid comes from SO_PEERCRED (kernel-provided), never from the request.
- Every read from a client runs under a deadline; a slow or silent client
  cannot hold a server task forever. A handler's own work has its deadline
  set by the handler (quiesce is bounded by design).
- Malformed requests get an error reply; nothing a client sends can raise out
  of the server loop.
- The control plane answers even when the server is out of descriptors (an
  application holding thousands of files open through the mount, issue 20):
  it keeps `RESERVED_FDS` descriptors (on /dev/null) in reserve, and when
  accept() fails with EMFILE/ENFILE it gives one back and accepts at once,
  taking it again when that client is done. With no reserve left it retries
  every `ACCEPT_BACKOFF` seconds (what trio.serve_listeners does), never exits.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from vfile.control import (
    MAX_REQUEST,
    ControlError,
    encode_reply,
    parse_request,
    prepare_runtime_dir,
)
from vfile.observe.ratelog import RateLimited

log = logging.getLogger(__name__)

#: how long a client may take to send its request line.
READ_DEADLINE = 5.0
#: descriptors held back so the control socket can accept while the server is out of them.
RESERVED_FDS = 4
#: a refused uid is logged at most this often (seconds)
REFUSAL_LOG_INTERVAL = 60.0
#: retry interval of accept() when out of descriptors and reserves.
ACCEPT_BACKOFF = 0.1
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Handler = Callable[[str, dict[str, Any], int], Awaitable[Any]]


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def _read_line(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError(f"request longer than {MAX_REQUEST} bytes")
    return bytes(buf.split(b"\n", 1)[0])


class ControlServer:
    """Serves one mount's control socket; `handler(cmd, args, uid)` does the work."""

    def __init__(self, path: Path, handler: Handler, owner_uid: int) -> None:
        self.path = path
        self.handler = handler
        self.owner_uid = owner_uid
        self._refusals = RateLimited(REFUSAL_LOG_INTERVAL, log)

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        prepare_runtime_dir(self.path.parent)
        self._remove_stale()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(str(self.path))
            os.chmod(self.path, 0o666)  # see module docstring: refusal is by peer uid
            sock.listen(64)
            task_status.started(self.path)
            await self._accept_loop(sock)
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _accept_loop(self, sock: trio.socket.SocketType) -> None:
        reserve = _Reserve(RESERVED_FDS)
        warned = False
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        conn, _ = await sock.accept()
                    except OSError as err:
                        if err.errno not in _OUT_OF_DESCRIPTORS:
                            raise
                        if reserve.release():
                            continue  # its slot is this client's now
                        if not warned:
                            log.warning("control: out of descriptors and reserves (%s); "
                                        "retrying accept", err.strerror)
                            warned = True
                        await trio.sleep(ACCEPT_BACKOFF)
                        continue
                    warned = False
                    nursery.start_soon(self._serve_conn, conn, reserve)
        finally:
            reserve.close()

    async def _serve_conn(self, conn: trio.socket.SocketType, reserve: _Reserve) -> None:
        try:
            await self._serve_one(trio.SocketStream(conn))
        except Exception:
            # One connection's surprise must not leave this nursery: the mount's is next
            # (a28: a RecursionError from the parser took the mount down)
            log.exception("control: a connection failed")
        finally:
            reserve.refill()

    def _remove_stale(self) -> None:
        """A socket left by a crashed server is removed; a live one means busy."""
        if not self.path.exists():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)
        else:
            raise ControlError(f"another vfile serves this mountpoint's control socket {self.path}")
        finally:
            probe.close()

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                uid = peer_uid(stream.socket)  # type: ignore[arg-type]
                if uid not in (0, self.owner_uid):
                    # Once a minute per uid: a user connecting in a loop wrote a line to
                    # root's log per connection (s26, tests/t4_input26_test.py).
                    self._refusals(f"uid {uid}", logging.WARNING,
                                   "control: refused uid %d (owner is uid %d)", uid,
                                   self.owner_uid)
                    await stream.send_all(encode_reply(
                        False, f"refused: uid {uid} is neither root nor the mount's owner "
                               f"(uid {self.owner_uid})"))
                    return
                with trio.fail_after(READ_DEADLINE):
                    line = await _read_line(stream)
                cmd, args = parse_request(line)
            except (ValueError, trio.TooSlowError) as err:
                reply = encode_reply(False, err if str(err) else "request timed out")
                await _send_quietly(stream, reply)
                return
            except trio.BrokenResourceError:
                return
            try:
                result = await self.handler(cmd, args, uid)
                reply = encode_reply(True, result)
            except ControlError as err:
                reply = encode_reply(False, err)
            except Exception as err:
                log.exception("control: command %r failed", cmd)
                reply = encode_reply(False, f"{cmd} failed: {err}")
            await _send_quietly(stream, reply)


class _Reserve:
    """Descriptors held back for the control socket (see the module docstring)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._fds: list[int] = []
        self.refill()

    def release(self) -> bool:
        """Give one back to the process; False if none is left."""
        if not self._fds:
            return False
        os.close(self._fds.pop())
        return True

    def refill(self) -> None:
        while len(self._fds) < self.size:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return  # still short: the next client's end tries again

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    # The client may have gone away; there is nobody left to tell.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
