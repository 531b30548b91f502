"""Attack on reused clamd IDSESSION connections (scanner/clamd_session.py, the drain's
pipelined batches and the single FILDES scans), as a confused appliance: a reply
that arrives on an idle connection, numbered for the request the client will send
next (a reply replayed or answered twice by a proxy, a stale one from a request the
client dropped).

Reply numbers only tell requests of one connection apart; a reply already waiting
when a request is sent cannot be its answer. Such a connection must not be reused:
otherwise that waiting "OK" became the verdict of the next file, whatever it held.

A fake clamd on a unix socket (receives the descriptors, reads them, and answers
FOUND for content starting with EVIL); after each reply it sends a premature one.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vfile.scanner.clamd import ClamdClient
from vfile.scanner.urls import parse_appliance_url
from vfile.scanner.verdict import ApplianceError, Outcome

DEADLINE = 20.0  # generous "does not hang" bound


class Confused:
    """A clamd that answers each FILDES truthfully, then also `n+1: fd[0]: OK`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.premature = threading.Event()  # set once a premature reply went out
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            th = threading.Thread(target=self._session, args=(conn,), daemon=True)
            th.start()
            self._threads.append(th)

    def _session(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            n = 0
            while True:
                try:
                    data, anc, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(16))
                except OSError:
                    return  # the client closed a connection it would not reuse
                if not data:
                    return
                fds = []
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.extend(array.array("i", payload[:len(payload) - len(payload) % 4]))
                buf += data
                for fd in fds:
                    try:
                        evil = os.pread(fd, 4, 0) == b"EVIL"  # the offset is shared: pread
                    finally:
                        os.close(fd)
                    n += 1
                    verdict = b"Evil.Test FOUND" if evil else b"OK"
                    try:
                        conn.sendall(b"%d: fd[%d]: %s\0" % (n, fd, verdict))
                    except OSError:
                        return
                    # The confusion: an answer to a request not made yet, once the client
                    # has taken the true one (it then waits on the idle connection).
                    threading.Timer(0.1, self._premature, (conn, n + 1)).start()

    def _premature(self, conn: socket.socket, n: int) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(b"%d: fd[0]: OK\0" % n)
        self.premature.set()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


@contextlib.contextmanager
def confused(tmp_path: Path) -> Iterator[Confused]:
    server = Confused(tmp_path / "clamd.sock")
    th = threading.Thread(target=server.serve, daemon=True)
    th.start()
    try:
        yield server
    finally:
        server.close()
        th.join(5)


def _files(tmp_path: Path) -> tuple[int, int]:
    (tmp_path / "clean").write_bytes(b"clean content\n")
    (tmp_path / "evil").write_bytes(b"EVIL content\n")
    return (os.open(tmp_path / "clean", os.O_RDONLY), os.open(tmp_path / "evil", os.O_RDONLY))


async def _not_clean(answer: object) -> None:
    assert answer != (Outcome.CLEAN, ""), "a waiting reply was taken as the evil file's verdict"


@pytest.mark.parametrize("pipelined", [True, False])
async def test_a_reply_waiting_on_an_idle_connection_answers_no_later_request(
        tmp_path: Path, pipelined: bool) -> None:
    clean, evil = _files(tmp_path)
    try:
        with confused(tmp_path) as server, trio.fail_after(DEADLINE):
            client = ClamdClient(parse_appliance_url(f"clamd://{server.path}"))

            async def scan(fd: int) -> tuple[Outcome, str]:
                if pipelined:
                    return (await client.scan_fds([fd]))[0]
                return await client.scan_fd(fd, size=os.fstat(fd).st_size)

            assert await scan(clean) == (Outcome.CLEAN, "")
            await trio.to_thread.run_sync(server.premature.wait)  # sent: in our socket
            try:
                answer: object = await scan(evil)
            except ApplianceError as err:
                answer = err  # an error is fine: never a clean verdict
            await _not_clean(answer)
            # A fresh connection answers truthfully.
            with contextlib.suppress(ApplianceError):
                answer = await scan(evil)
            assert answer == (Outcome.INFECTED, "Evil.Test") or isinstance(answer, ApplianceError)
    finally:
        os.close(clean)
        os.close(evil)
