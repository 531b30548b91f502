"""Against the real engines: Debian's clamd (TCP INSTREAM, unix FILDES) and c-icap."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
from servers import GENERATED_NAME, UNOFFICIAL, Cicap, Clamd, Samples, make_samples, running_clamd

from vfile.scanner.pool import Pool
from vfile.scanner.verdict import Outcome

DEADLINE = 10.0
pytestmark = [pytest.mark.clamd]


def _urls(clamd: Clamd, cicap: Cicap) -> dict[str, str]:
    return {"clamd-tcp": clamd.tcp_url, "clamd-unix": clamd.unix_url, "icap": cicap.url}


@pytest.mark.parametrize("transport", ["clamd-tcp", "clamd-unix", "icap"])
async def test_real_engine_verdicts(clamd_server: Clamd, cicap_server: Cicap,
                                    samples: Samples, transport: str) -> None:
    pool = Pool([_urls(clamd_server, cicap_server)[transport]], attempt_timeout=5)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(DEADLINE):
            await nursery.start(pool.serve)
            assert pool.signature_version()
            assert (await pool.scan_path(str(samples.clean))).outcome is Outcome.CLEAN
            v = await pool.scan_path(str(samples.eicar))
            assert v.outcome is Outcome.INFECTED and "EICAR" in v.detail
            v = await pool.scan_path(str(samples.generated))
            assert v.outcome is Outcome.INFECTED
            if transport != "icap":  # c-icap names it only when it fits the preview
                assert v.detail == GENERATED_NAME + UNOFFICIAL
        nursery.cancel_scope.cancel()


async def test_clamd_stream_limit_is_error(clamd_server: Clamd, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))  # StreamMaxLength is 10M
    with trio.fail_after(DEADLINE):
        v = await Pool([clamd_server.tcp_url], attempt_timeout=5).scan_path(str(big))
    assert v.outcome is Outcome.ERROR and "size limit" in v.detail


@pytest.mark.parametrize("how", [signal.SIGSTOP, signal.SIGKILL])
async def test_clamd_stopped_or_killed_gives_error_in_time(tmp_path: Path, how: int) -> None:
    s = make_samples(tmp_path / "s")
    with running_clamd(tmp_path / "c", s.sigdir) as clamd:
        pool = Pool([clamd.tcp_url, clamd.unix_url], attempt_timeout=0.5, retries=1)
        with trio.fail_after(DEADLINE):
            assert (await pool.scan_path(str(s.eicar))).outcome is Outcome.INFECTED
        os.kill(clamd.proc.pid, how)
        try:
            with trio.fail_after(DEADLINE):
                v = await pool.scan_path(str(s.clean))
            assert v.outcome is Outcome.ERROR
        finally:
            if how == signal.SIGSTOP:
                os.kill(clamd.proc.pid, signal.SIGCONT)
