"""Many `zFILDES` requests, each with its descriptor, in one `sendmmsg(2)` call.

A drain batch sends 16 FILDES requests on one clamd session. One `sendmsg` each
was the largest share of the server's trio thread (py-spy, `bench/drain.py
--scale --profile`: about a fifth of its busy samples): every call gives up
the GIL and wakes a clamd thread that may take the core. `sendmmsg` hands the
kernel all of them at once. On a unix stream socket the kernel queues each
message as `sendmsg` would (one skb each, its descriptor attached to its own
bytes), so clamd reads exactly what the one-at-a-time loop sent.

Python's socket module has no `sendmmsg`: it is called through ctypes (Linux,
glibc or musl). Where that is not possible `send_many` returns 0 and the
caller sends one by one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from collections.abc import Sequence

#: what each message carries: the command, then the dummy byte clamdscan sends with
#: the descriptor
PAYLOAD = b"zFILDES\0\0"
_CMSG_SPACE = socket.CMSG_SPACE(4)
_CMSG_HEAD = struct.Struct("@Nii")  # cmsg_len, cmsg_level, cmsg_type


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int))


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


def _libc_sendmmsg() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_sendmmsg = _libc_sendmmsg()
_payload = ctypes.create_string_buffer(PAYLOAD, len(PAYLOAD))


def available() -> bool:
    return _sendmmsg is not None


def send_many(sock: socket.socket, fds: Sequence[int]) -> tuple[int, int]:
    """Send a FILDES message for each of `fds`, in order, without blocking: (how many
    went whole, bytes of the next one that went). Raises BlockingIOError if none
    went at all, OSError for a failed socket; (0, 0) with nothing to send or where
    `sendmmsg` cannot be called (see `available`)."""
    n = len(fds)
    if _sendmmsg is None or not n:
        return 0, 0
    control = ctypes.create_string_buffer(_CMSG_SPACE * n)
    iovs = (_Iovec * n)()
    msgs = (_Mmsghdr * n)()
    base = ctypes.addressof(control)
    for i, fd in enumerate(fds):
        _CMSG_HEAD.pack_into(control, i * _CMSG_SPACE, socket.CMSG_LEN(4),
                             socket.SOL_SOCKET, socket.SCM_RIGHTS)
        struct.pack_into("@i", control, i * _CMSG_SPACE + _CMSG_HEAD.size, fd)
        iovs[i].base = ctypes.addressof(_payload)
        iovs[i].len = len(PAYLOAD)
        hdr = msgs[i].hdr
        hdr.iov = ctypes.pointer(iovs[i])
        hdr.iovlen = 1
        hdr.control = base + i * _CMSG_SPACE
        hdr.controllen = _CMSG_SPACE
    while True:
        sent = _sendmmsg(sock.fileno(), msgs, n, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        if sent >= 0:
            break
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue  # as Python's own socket calls do (PEP 475)
        if err in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise BlockingIOError(err, os.strerror(err))
        raise OSError(err, os.strerror(err))
    # The kernel counts a message that went in part among those sent (its msg_len
    # says how much went) and stops there (net/socket.c __sys_sendmmsg).
    if sent and msgs[sent - 1].len < len(PAYLOAD):
        return sent - 1, msgs[sent - 1].len
    return sent, 0
