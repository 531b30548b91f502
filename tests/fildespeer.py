"""clamd's side of the drain's FILDES requests, for the `send_fildes_many` tests:
small files to pass, and a reader that takes the requests apart as clamd does."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from vfile.scanner import fdsend


@contextmanager
def open_files(directory: os.PathLike[str], n: int) -> Iterator[list[int]]:
    """n read-only descriptors of files whose content names them (`file 0`, ...)."""
    fds = []
    try:
        for i in range(n):
            path = os.path.join(directory, f"f{i}")
            with open(path, "wb") as f:
                f.write(b"file %d" % i)
            fds.append(os.open(path, os.O_RDONLY))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def receive(sock: socket.socket, n: int) -> list[bytes]:
    """n requests as clamd reads them: the command's bytes, then the descriptor with
    its dummy byte; each descriptor's file content, to tell them apart."""
    out = []
    for _ in range(n):
        data = b""
        while len(data) < len(fdsend.PAYLOAD):
            chunk, anc, flags, _ = sock.recvmsg(len(fdsend.PAYLOAD) - len(data),
                                                socket.CMSG_SPACE(4 * 4))
            assert not flags & socket.MSG_CTRUNC
            assert chunk, "connection closed"
            got = [fd for level, kind, raw in anc if level == socket.SOL_SOCKET
                   and kind == socket.SCM_RIGHTS for fd in array.array("i", raw)]
            assert len(got) == (0 if data else 1), (data, chunk, got)  # one, with its first byte
            for fd in got:
                out.append(os.pread(fd, 100, 0))
                os.close(fd)
            data += chunk
        assert data == fdsend.PAYLOAD, "a request arrived cut, or merged with the next"
    return out
