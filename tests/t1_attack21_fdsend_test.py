"""x21: a short `sendmmsg(2)` in the drain's FILDES batches (scanner/fdsend.py).

The kernel counts a message that went only in part among those sent: it sets that
message's `msg_len` to the bytes that went and returns the count including it
(net/socket.c `__sys_sendmmsg`: `put_user(err, &entry->msg_len); ++datagrams`).
A unix stream socket takes 9 bytes whole today, so this is the kernel's contract
played by a fake `sendmmsg` over a real socket pair: the requests clamd reads must
still be whole, in order, each with its own descriptor.
"""

from __future__ import annotations

import array
import ctypes
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from fildespeer import open_files, receive

from vfile.scanner import fdsend
from vfile.scanner.clamd_session import send_fildes_many


@pytest.fixture
def files(tmp_path: os.PathLike[str]) -> Iterator[list[int]]:
    with open_files(tmp_path, 6) as fds:
        yield fds


def short_sendmmsg(whole: int, part: int) -> Any:
    """A `sendmmsg` that, on its first call, sends `whole` messages whole and `part`
    bytes of the next (with its descriptor), and returns `whole + 1` as the kernel
    does; later calls send every message whole."""
    calls = [0]

    def fake(sockfd: int, msgs: Any, n: int, flags: int) -> int:
        calls[0] += 1
        sock = socket.socket(fileno=os.dup(sockfd))
        try:
            for i in range(n):
                hdr = msgs[i].hdr
                fd = ctypes.c_int.from_address(hdr.control + fdsend._CMSG_HEAD.size).value
                size = part if calls[0] == 1 and i == whole else len(fdsend.PAYLOAD)
                sent = sock.sendmsg([fdsend.PAYLOAD[:size]], [
                    (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
                msgs[i].len = sent
                if calls[0] == 1 and i == whole:
                    return i + 1  # the short one counts as sent
            return n
        finally:
            sock.detach()
    return fake


@pytest.mark.parametrize(("whole", "part"), [(0, 3), (2, 1), (4, 8)])
async def test_a_message_sent_in_part_is_finished_before_the_next(
        files: list[int], monkeypatch: pytest.MonkeyPatch, whole: int, part: int) -> None:
    assert fdsend.available()
    monkeypatch.setattr(fdsend, "_sendmmsg", short_sendmmsg(whole, part))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.setblocking(False)
        with trio.fail_after(30):
            await send_fildes_many(a, files)
        a.shutdown(socket.SHUT_WR)
        assert receive(b, len(files)) == [b"file %d" % i for i in range(len(files))]
        assert b.recv(100) == b"", "bytes beyond the requests"
