"""`send_fildes_many` (the drain batch's FILDES requests in `sendmmsg` calls): every
request arrives whole, in order, with its own descriptor, as the one-`sendmsg`-each loop
sent them; a full socket (a slow clamd) only makes it wait."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator

import pytest
import trio

from vfile.scanner import fdsend
from vfile.scanner.clamd_session import send_fildes_many


@pytest.fixture
def files(tmp_path: os.PathLike[str]) -> Iterator[list[int]]:
    fds = []
    for i in range(8):
        path = os.path.join(tmp_path, f"f{i}")
        with open(path, "wb") as f:
            f.write(b"file %d" % i)
        fds.append(os.open(path, os.O_RDONLY))
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _receive(sock: socket.socket, n: int) -> list[bytes]:
    """n requests as clamd reads them: the command's bytes, then the descriptor with its
    dummy byte; each descriptor's file content, to tell them apart."""
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
        assert data == fdsend.PAYLOAD
    return out


async def test_every_request_arrives_whole_and_in_order(files: list[int]) -> None:
    assert fdsend.available()  # Linux: else this would only test the fallback
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.setblocking(False)
        order = [files[i % len(files)] for i in (3, 1, 4, 1, 5, 2, 6, 0, 7)]
        await send_fildes_many(a, order)
        assert _receive(b, len(order)) == [os.pread(fd, 100, 0) for fd in order]


async def test_a_full_socket_waits_and_loses_nothing(files: list[int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        order = [files[i % len(files)] for i in range(3000)]
        received: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: received.extend(
                _receive(b, len(order))))
            await send_fildes_many(a, order)
        assert received == [os.pread(fd, 100, 0) for fd in order]
