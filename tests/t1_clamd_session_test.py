"""Reused IDSESSION connections for FILDES scans (scanner/clamd_session.py), against the
built-in appliance in-process: reuse, and the cases where a connection must not be reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from servers import Builtin, Samples

from vfile.scanner.clamd import ClamdClient
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
