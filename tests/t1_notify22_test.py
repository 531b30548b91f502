"""While a long start step runs (the journal's check after an unclean stop: up to 900 s,
vfile.journal.torn), the mount asks systemd for more start time: a unit's default start
timeout is 90 s, and systemd would kill the check and restart it forever (nl22)."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from vfile import notify


async def test_a_long_start_step_extends_the_start_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"vfile-test-extend-{os.getpid()}"
    got: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(60)  # generous: a loaded machine
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setattr(notify, "EXTEND_EVERY", 0.05)

        def check() -> str:  # a blocking step, running until systemd heard twice
            while len(got) < 2:
                got.append(sock.recv(4096).decode())
            return "intact"

        with trio.fail_after(120):
            assert await notify.run_extending(check, "checking the journal") == "intact"
    for g in got:
        key, _, rest = g.partition("=")
        assert key == "EXTEND_TIMEOUT_USEC"
        usec, _, status = rest.partition("\n")
        assert int(usec) > 0.05 * 1e6 and status == "STATUS=checking the journal"


async def test_a_failing_start_step_raises_its_own_error() -> None:
    """Not wrapped in the nursery's ExceptionGroup: the caller maps JournalError and
    OSError to their exit codes (a damaged journal that cannot be moved aside was a
    traceback and exit 1 when the check first ran in a thread)."""
    def check() -> str:
        raise PermissionError(1, "the state directory refused the move")

    with trio.fail_after(60), pytest.raises(PermissionError):
        await notify.run_extending(check, "checking the journal")
