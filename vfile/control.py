"""The control plane: one unix socket per mount, JSON lines, peer credentials.

Wire format: the client sends ONE request line, ``{"cmd": NAME, "args": {...}}``
terminated by ``\\n`` (at most `MAX_REQUEST` bytes); the server answers ONE
line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}``, and
closes. One request per connection keeps both sides trivially correct.

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
import hashlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
#: how long a client may take to send its request line.
READ_DEADLINE = 5.0
#: descriptors held back so the control socket can accept while the server is out of them.
RESERVED_FDS = 4
#: retry interval of accept() when out of descriptors and reserves.
ACCEPT_BACKOFF = 0.1
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: where root's mounts put their sockets; others use $XDG_RUNTIME_DIR/vfile or /tmp/vfile-UID.
ROOT_RUNTIME_DIR = Path("/run/vfile")

Handler = Callable[[str, dict[str, Any], int], Awaitable[Any]]


class ControlError(Exception):
    """The control plane could not be reached, refused us, or the command failed."""


class Refused(ControlError):
    """The peer is neither root nor the mount's owner."""


def runtime_dir(uid: int | None = None) -> Path:
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return ROOT_RUNTIME_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "vfile"
    return Path(f"/tmp/vfile-{uid}")


def prepare_runtime_dir(path: Path, uid: int | None = None) -> Path:
    """Create (or check) the directory that holds a mount's sockets; return it.

    Root's `/run/vfile` is root's. Anyone else's must be a real directory (not a
    symlink) owned by them with mode 0700: a directory another local user made at
    the predictable /tmp/vfile-UID first could hold a socket posing as the embedded
    appliance (a fake clamd answering OK that receives a descriptor of every file
    scanned) or as the control plane.
    """
    uid = os.getuid() if uid is None else uid
    private = uid != 0
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.mkdir(mode=0o700 if private else 0o755)
        if private:
            os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    except OSError as err:
        raise ControlError(f"runtime directory {path}: cannot create it: "
                           f"{err.strerror or err}") from None
    try:
        st = os.lstat(path)
    except OSError as err:
        raise ControlError(f"runtime directory {path}: {err.strerror or err}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ControlError(f"runtime directory {path} is a symlink; refusing it (remove it, "
                           "or set XDG_RUNTIME_DIR)")
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"runtime directory {path} is not a directory; refusing it")
    if st.st_uid != uid:
        raise ControlError(f"runtime directory {path} is owned by uid {st.st_uid}, not by "
                           f"uid {uid}; refusing it (remove it, or set XDG_RUNTIME_DIR)")
    if private and stat.S_IMODE(st.st_mode) != 0o700:
        raise ControlError(f"runtime directory {path} has mode "
                           f"{stat.S_IMODE(st.st_mode):04o}, not 0700; refusing it")
    return path


def _trusted_dir(path: Path) -> bool:
    """A runtime directory a client may use: a real directory owned by root or us."""
    try:
        st = os.lstat(path)
    except OSError:
        return True  # absent: nothing listens there anyway
    return stat.S_ISDIR(st.st_mode) and st.st_uid in (0, os.getuid())


def socket_name(mountpoint: str | os.PathLike[str]) -> str:
    """A short, stable socket file name for a mountpoint (sun_path is 108 bytes)."""
    real = os.path.realpath(os.fspath(mountpoint))
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    base = os.path.basename(real.rstrip("/")) or "root"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:24]
    return f"{safe}-{digest}.sock"


def candidate_sockets(mountpoint: str | os.PathLike[str]) -> list[Path]:
    """Where a mount's socket may be: the caller's runtime dir first, then root's."""
    name = socket_name(mountpoint)
    dirs = [runtime_dir()]
    if ROOT_RUNTIME_DIR not in dirs:
        dirs.append(ROOT_RUNTIME_DIR)
    return [d / name for d in dirs]


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Parse one request line; raise ValueError with a message fit for the client."""
    try:
        req = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"malformed request: {err}") from None
    if not isinstance(req, dict):
        raise ValueError("malformed request: expected a JSON object")
    cmd = req.get("cmd")
    args = req.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        raise ValueError("malformed request: 'cmd' must be a non-empty string")
    if not isinstance(args, dict):
        raise ValueError("malformed request: 'args' must be an object")
    return cmd, args


def encode_reply(ok: bool, payload: Any) -> bytes:
    body = {"ok": True, "result": payload} if ok else {"ok": False, "error": str(payload)}
    return json.dumps(body, default=str).encode() + b"\n"


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
                    log.warning("control: refused uid %d (owner is uid %d)", uid, self.owner_uid)
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


def call(mountpoint: str | os.PathLike[str], cmd: str, args: dict[str, Any] | None = None,
         *, timeout: float = 30.0) -> Any:
    """Send one command to a live mount (blocking; for the CLI). Raise ControlError."""
    for path in candidate_sockets(mountpoint):
        if not _trusted_dir(path.parent):
            continue  # someone else's directory: whatever listens there is not our mount
        try:
            return call_socket(path, cmd, args, timeout=timeout)
        except _NotListening:
            continue
    raise ControlError(f"no live vfile mount answers for {os.fspath(mountpoint)!r}")


class _NotListening(ControlError):
    pass


def call_socket(path: str | os.PathLike[str], cmd: str, args: dict[str, Any] | None = None,
                *, timeout: float = 30.0) -> Any:
    """Send one command to the control socket at `path` (blocking)."""
    request = json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise _NotListening(f"{path}: {err.strerror}") from None
        except OSError as err:
            raise ControlError(f"cannot reach the control socket {path}: {err.strerror}") from None
        data = bytearray()
        try:
            sock.sendall(request)
        except TimeoutError:
            raise ControlError(f"{cmd}: no answer from {path} within {timeout:g}s") from None
        except OSError as err:
            # A refusal is sent, and the server's end closed, without reading the
            # request: our send may then fail (EPIPE/ECONNRESET) while the reply
            # already waits in our receive buffer. Read it all the same.
            if err.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise ControlError(f"{cmd}: {err.strerror}") from None
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            raise ControlError(f"{cmd}: no answer from {path} within {timeout:g}s") from None
        except OSError as err:
            # A refusal is sent before the server reads the request; the reset
            # that may follow our unread request still leaves the reply readable.
            if err.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise ControlError(f"{cmd}: {err.strerror}") from None
    return _decode_reply(bytes(data), cmd)


def _decode_reply(data: bytes, cmd: str) -> Any:
    try:
        reply = json.loads(data.split(b"\n", 1)[0])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError(f"{cmd}: malformed reply from the mount") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError(f"{cmd}: malformed reply from the mount")
    if not reply["ok"]:
        message = str(reply.get("error", "failed"))
        if message.startswith("refused:"):
            raise Refused(message)
        raise ControlError(message)
    return reply.get("result")
