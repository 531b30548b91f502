"""`send_fildes_many` (the drain batch's FILDES requests in `sendmmsg` calls): every
request arrives whole, in order, with its own descriptor, as the one-`sendmsg`-each loop
sent them; a full socket (a slow clamd) only makes it wait."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import trio
from fildespeer import open_files, receive

from vfile.scanner import fdsend
from vfile.scanner.clamd_session import send_fildes_many


@pytest.fixture
def files(tmp_path: os.PathLike[str]) -> Iterator[list[int]]:
    with open_files(tmp_path, 8) as fds:
        yield fds


async def test_every_request_arrives_whole_and_in_order(files: list[int]) -> None:
    assert fdsend.available()  # Linux: else this would only test the fallback
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.setblocking(False)
        order = [files[i % len(files)] for i in (3, 1, 4, 1, 5, 2, 6, 0, 7)]
        await send_fildes_many(a, order)
        assert receive(b, len(order)) == [os.pread(fd, 100, 0) for fd in order]


async def test_a_full_socket_waits_and_loses_nothing(files: list[int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        order = [files[i % len(files)] for i in range(3000)]
        received: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: received.extend(
                receive(b, len(order))))
            await send_fildes_many(a, order)
        assert received == [os.pread(fd, 100, 0) for fd in order]
