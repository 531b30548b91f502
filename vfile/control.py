"""The control plane's client side and wire format (no trio: the CLI imports it).

One unix socket per mount, JSON lines, peer credentials. The trio server that
answers on the socket is `vfile.control_server`; this module holds what both
sides share (socket naming, runtime directories, request and reply encoding,
errors) and the blocking client `call` the command line uses. It must stay
free of trio: `vfile quiesce` runs inside a freeze hook with the guest agent's
timeout running, and every import here is paid on each call (issue 12).

Wire format: the client sends ONE request line, ``{"cmd": NAME, "args": {...}}``
terminated by ``\\n`` (at most `MAX_REQUEST` bytes); the server answers ONE
line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}``, and
closes. One request per connection keeps both sides trivially correct.

Invariants (the server's are listed in `vfile.control_server`):
- Only root and the mount's owner are served; a refusal arrives as an error
  reply starting with ``refused:`` and is raised here as `Refused`.
- A client only talks to sockets in a runtime directory owned by root or by
  itself: whatever listens in someone else's directory is not our mount.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

MAX_REQUEST = 64 * 1024
#: where root's mounts put their sockets; others use $XDG_RUNTIME_DIR/vfile or /tmp/vfile-UID.
ROOT_RUNTIME_DIR = Path("/run/vfile")


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


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Parse one request line; raise ValueError with a message fit for the client."""
    try:
        req = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"malformed request: {err}") from None
    except RecursionError:
        # Nested deeper than the interpreter recurses (a few KB of "["): not a ValueError,
        # it left the server loop and took the mount down with it (a28)
        raise ValueError("malformed request: nested too deeply") from None
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
        # Before anything is sent or believed: a mount of root's or ours listens there, not
        # another user who took the socket's name (x23, tests/t4_control_peer23_test.py).
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid not in (0, os.getuid()):
            raise ControlError(f"{path} is served by uid {uid}, not by a vfile mount of "
                               "root's or yours; not used")
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
