"""Reused IDSESSION connections for FILDES scans (scanner/clamd_session.py), against the
built-in appliance in-process: reuse, and the cases where a connection must not be reused."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio
from servers import Builtin, Samples

from vfile.scanner.clamd import ClamdClient
from vfile.scanner.clamd_session import NoReply, read_replies
from vfile.scanner.faults import Fault
from vfile.scanner.signatures import EICAR_NAME
from vfile.scanner.urls import parse_appliance_url
from vfile.scanner.verdict import ApplianceError, Outcome

DEADLINE = 10.0  # generous "does not hang" bound


async def scan(client: ClamdClient, path: Path) -> tuple[Outcome, str]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return await client.scan_fd(fd, size=os.fstat(fd).st_size)
    finally:
        os.close(fd)


async def test_scans_share_one_connection(builtin: Builtin, samples: Samples) -> None:
    client = ClamdClient(parse_appliance_url(builtin.unix_url))
    with trio.fail_after(DEADLINE):
        for _ in range(5):
            assert await scan(client, samples.clean) == (Outcome.CLEAN, "")
            assert await scan(client, samples.eicar) == (Outcome.INFECTED, EICAR_NAME)
    assert builtin.appliance.connections == 1


async def test_a_cancelled_scan_does_not_give_its_connection_back(
        builtin: Builtin, samples: Samples) -> None:
    client = ClamdClient(parse_appliance_url(builtin.unix_url))
    with trio.fail_after(DEADLINE):
        assert await scan(client, samples.clean) == (Outcome.CLEAN, "")
        builtin.appliance.set_fault(Fault("slowscan", 0.5))
        with trio.move_on_after(0.05) as cs:
            await scan(client, samples.eicar)  # its reply comes after we stopped waiting
        assert cs.cancelled_caught
        builtin.appliance.set_fault(None)
        # The late EICAR reply is never read as the answer to this clean file.
        assert await scan(client, samples.clean) == (Outcome.CLEAN, "")
    assert builtin.appliance.connections == 2


async def test_a_refusing_appliance_fails_reused_connections_too(
        builtin: Builtin, samples: Samples) -> None:
    client = ClamdClient(parse_appliance_url(builtin.unix_url))
    with trio.fail_after(DEADLINE):
        assert await scan(client, samples.clean) == (Outcome.CLEAN, "")
        builtin.appliance.set_fault(Fault("refuse"))
        await trio.sleep(0.1)  # the listener closes
        with pytest.raises(ApplianceError):
            await scan(client, samples.clean)
        builtin.appliance.set_fault(None)
        await trio.sleep(0.1)  # it listens again
        assert await scan(client, samples.clean) == (Outcome.CLEAN, "")


# --- pipelined batches (Sessions.fildes_many, the drain's) ---------------------------------


async def scan_many(client: ClamdClient, paths: list[Path]) -> list[tuple[Outcome, str]]:
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        return await client.scan_fds(fds)
    finally:
        for fd in fds:
            os.close(fd)


async def test_a_pipelined_batch_answers_each_file_on_one_connection(
        builtin: Builtin, samples: Samples) -> None:
    client = ClamdClient(parse_appliance_url(builtin.unix_url))
    paths = [samples.clean, samples.eicar, samples.clean, samples.clean, samples.eicar]
    expected = [(Outcome.INFECTED, EICAR_NAME) if p == samples.eicar else (Outcome.CLEAN, "")
                for p in paths]
    with trio.fail_after(DEADLINE):
        for _ in range(3):
            assert await scan_many(client, paths) == expected
    assert builtin.appliance.connections == 1


async def test_a_cancelled_batch_does_not_give_its_connection_back(
        builtin: Builtin, samples: Samples) -> None:
    client = ClamdClient(parse_appliance_url(builtin.unix_url))
    with trio.fail_after(DEADLINE):
        assert await scan_many(client, [samples.clean]) == [(Outcome.CLEAN, "")]
        builtin.appliance.set_fault(Fault("slowscan", 0.2))
        with trio.move_on_after(0.05) as cs:
            await scan_many(client, [samples.eicar, samples.eicar])
        assert cs.cancelled_caught
        builtin.appliance.set_fault(None)
        # The late EICAR replies (requests 2 and 3 of that session) answer nothing here.
        assert await scan_many(client, [samples.clean, samples.clean]) == [(Outcome.CLEAN, "")] * 2
    assert builtin.appliance.connections == 2


async def replies_to(sent: bytes, n: int, *, close: bool = False) -> list[bytes]:
    """`read_replies` for requests 1..n, the appliance's side having sent `sent`."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with ours, theirs:
        theirs.sendall(sent)
        if close:
            theirs.close()
        with trio.fail_after(DEADLINE):
            return await read_replies(ours, 1, n)


async def test_replies_out_of_order_are_matched_by_their_number() -> None:
    got = await replies_to(b"3: fd[7]: Eicar FOUND\0" b"1: fd[5]: OK\0" b"2: fd[6]: OK\0", 3)
    assert got == [b"fd[5]: OK", b"fd[6]: OK", b"fd[7]: Eicar FOUND"]


@pytest.mark.parametrize("sent", [
    b"4: fd[5]: OK\0",                      # not a request of this batch
    b"0: fd[5]: OK\0",
    b"1: fd[5]: OK\0" b"1: fd[6]: OK\0",   # answered twice
    b"fd[5]: OK\0",                         # no request number
    b"x1: fd[5]: OK\0",
    b"1: fd[5]: OK\0" b"2: fd[6]: OK\0" b"3: fd[7]: OK\0" b"4",  # more than was asked
])
async def test_a_reply_to_no_open_request_fails_the_batch(sent: bytes) -> None:
    with pytest.raises(ApplianceError):
        await replies_to(sent, 3, close=True)


async def test_a_connection_lost_mid_batch_is_no_retryable_silence() -> None:
    # Nothing came: the caller may retry on a fresh connection (NoReply).
    with pytest.raises(NoReply):
        await replies_to(b"", 2, close=True)
    # Some replies came: the batch fails as a whole, not to be retried as silence.
    with pytest.raises(ApplianceError) as err:
        await replies_to(b"1: fd[5]: OK\0", 2, close=True)
    assert not isinstance(err.value, NoReply)
