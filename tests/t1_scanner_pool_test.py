"""The pool, the built-in appliance and the fault proxy, in-process (no real engines)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from servers import GENERATED_NAME, Builtin, Samples

from vfile.scanner.builtin import BuiltinAppliance
from vfile.scanner.faults import SERVER_KINDS, TIMED, Fault
from vfile.scanner.pool import Pool
from vfile.scanner.proxy import FaultProxy
from vfile.scanner.signatures import EICAR_NAME
from vfile.scanner.verdict import Outcome

DEADLINE = 5.0  # generous "does not hang" bound


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_builtin_verdicts(builtin: Builtin, samples: Samples, transport: str) -> None:
    pool = Pool([builtin.tcp_url if transport == "tcp" else builtin.unix_url])
    with trio.fail_after(DEADLINE):
        assert (await pool.scan_path(str(samples.clean))).outcome is Outcome.CLEAN
        v = await pool.scan_path(str(samples.eicar))
        assert (v.outcome, v.detail) == (Outcome.INFECTED, EICAR_NAME)
        assert v.sig_version.startswith("vfile-builtin")
        v = await pool.scan_path(str(samples.generated))
        assert (v.outcome, v.detail) == (Outcome.INFECTED, GENERATED_NAME)
        fd = os.open(samples.generated, os.O_RDONLY)
        try:  # a prefix no longer matches the hash signature
            v = await pool.scan_fd(fd, size=os.fstat(fd).st_size, limit=1000)
        finally:
            os.close(fd)
        assert v.outcome is Outcome.CLEAN


async def test_builtin_stream_limit_and_reload(tmp_path: Path, samples: Samples) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    appliance = BuiltinAppliance(str(sigdir), max_stream=50_000)
    async with trio.open_nursery() as nursery:
        url = "clamd://" + (await nursery.start(appliance.serve, "tcp://127.0.0.1:0"))[6:]
        pool = Pool([url])
        with trio.fail_after(DEADLINE):
            v = await pool.scan_path(str(samples.generated))  # 100 kB > 50 kB
            assert v.outcome is Outcome.ERROR and "size limit" in v.detail
            old = appliance.version()
            (sigdir / "x.hdb").write_text((samples.sigdir / "vfile-test.hdb").read_text())
            appliance.reload()
            assert appliance.version() != old
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("fault", [*SERVER_KINDS])
async def test_builtin_faults_give_errors(tmp_path: Path, samples: Samples, fault: str) -> None:
    f = Fault(fault, 3.0) if fault in TIMED else Fault(fault)  # type: ignore[arg-type]
    async with running(tmp_path, samples, f) as b:
        for url in (b.tcp_url, b.unix_url):
            pool = Pool([url], attempt_timeout=0.5, retries=1)
            with trio.fail_after(DEADLINE):
                v = await pool.scan_path(str(samples.clean))
            assert v.outcome is Outcome.ERROR, (url, v)
        b.appliance.set_fault(None)
        with trio.fail_after(DEADLINE):
            await trio.sleep(0.05)  # refuse: the listener comes back
            v = await Pool([b.tcp_url]).scan_path(str(samples.eicar))
        assert v.outcome is Outcome.INFECTED


async def until(predicate: Callable[[], bool]) -> None:
    """Poll `predicate` (the caller bounds this with a deadline)."""
    for _ in iter(int, 1):
        if predicate():
            return
        await trio.sleep(0.02)


def running(tmp: Path, s: Samples, fault: Fault | None):  # type: ignore[no-untyped-def]
    from servers import running_builtin
    return running_builtin(tmp, s.sigdir, fault)


@pytest.mark.parametrize("fault", ["refuse", "blackhole", "delay", "reset", "garbage",
                                   "truncate", "trickle"])
async def test_proxy_faults_give_errors(builtin: Builtin, samples: Samples, fault: str) -> None:
    f = Fault("delay", 3.0) if fault == "delay" else Fault(fault)  # type: ignore[arg-type]
    proxy = FaultProxy(builtin.unix_url)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(proxy.serve, "tcp://127.0.0.1:0")
        url = "clamd://" + bound[6:]
        pool = Pool([url], attempt_timeout=0.5, retries=0)
        with trio.fail_after(DEADLINE):
            assert (await pool.scan_path(str(samples.eicar))).outcome is Outcome.INFECTED
        proxy.set_fault(f)
        with trio.fail_after(DEADLINE):
            v = await Pool([url], attempt_timeout=0.5, retries=0).scan_path(str(samples.clean))
        assert v.outcome is Outcome.ERROR, v
        nursery.cancel_scope.cancel()


async def test_proxy_passes_fildes_over_unix(builtin: Builtin, samples: Samples,
                                             tmp_path: Path) -> None:
    proxy = FaultProxy(builtin.unix_url)
    sock = f"/tmp/vfp-{os.getpid()}.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve, f"unix://{sock}")
        with trio.fail_after(DEADLINE):
            v = await Pool([f"clamd://{sock}"]).scan_path(str(samples.generated))
        assert (v.outcome, v.detail) == (Outcome.INFECTED, GENERATED_NAME)
        nursery.cancel_scope.cancel()


async def test_pool_failover_breaker_and_recovery(tmp_path: Path, samples: Samples) -> None:
    async with running(tmp_path / "a", samples, None) as first, \
            running(tmp_path / "b", samples, None) as second:
        pool = Pool([first.tcp_url, second.tcp_url], attempt_timeout=0.3, retries=0,
                    breaker_failures=2, breaker_cooldown=0.5, probe_interval=0.1)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.serve)
            assert pool.available() and pool.signature_version().startswith("vfile-builtin")
            first.appliance.set_fault(Fault("blackhole"))
            with trio.fail_after(DEADLINE):
                v = await pool.scan_path(str(samples.eicar))
            assert v.outcome is Outcome.INFECTED and v.appliance == second.tcp_url
            with trio.fail_after(DEADLINE):  # probes fail too: the breaker opens
                await until(lambda: pool.statistics()[0]["state"] != "closed")
            # with the first known down, a scan goes straight to the second
            tried = pool.statistics()[0]["scans"]
            with trio.fail_after(DEADLINE):
                v = await pool.scan_path(str(samples.clean))
            assert v.outcome is Outcome.CLEAN and v.appliance == second.tcp_url
            assert pool.statistics()[0]["scans"] == tried  # no attempt on the open one
            second.appliance.set_fault(Fault("refuse"))
            with trio.fail_after(DEADLINE):
                await until(lambda: not pool.available())
                v = await pool.scan_path(str(samples.clean))
            assert v.outcome is Outcome.ERROR and "no appliance available" in v.detail
            first.appliance.set_fault(None)
            with trio.fail_after(DEADLINE):
                await pool.wait_available()
                v = await pool.scan_path(str(samples.eicar))
            assert v.outcome is Outcome.INFECTED and v.appliance == first.tcp_url
            stats = pool.statistics()
            assert stats[0]["state"] == "closed" and stats[0]["errors"] > 0
            assert stats[0]["p50_ms"] is not None and stats[1]["healthy"] is False
            nursery.cancel_scope.cancel()
