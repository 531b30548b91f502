"""vfile.filter.gate without the kernel: the real built-in appliance (in-process), a
real Pool and a real Journal in tmp_path; the hooks are called as the
passthrough would call them. Faults are switched on the live appliance.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest
import trio
from gates import CTX, MARGIN, gate_env, profile_toml, until

from vfile.filter.gate import Gate
from vfile.filter.scanning import SIG_CACHE_S
from vfile.hooks import Denied
from vfile.journal.records import Reason
from vfile.scanner.faults import Fault
from vfile.scanner.signatures import EICAR, EICAR_NAME


async def test_clean_is_allowed_and_cached(tmp_path: Path) -> None:
    async with gate_env(tmp_path) as env:
        env.write("a/clean.txt", b"hello\n")
        await env.open("a/clean.txt")
        assert env.gate.stats.scans == 1
        await env.open("a/clean.txt")
        await env.open("a/clean.txt")
        assert env.gate.stats.scans == 1
        assert env.gate.stats.cache_hits >= 2
        await env.gate.wait_idle()
        rec = env.journal.get_verdict(env.identity("a/clean.txt"), env.pool.signature_version())
        assert rec is not None and rec.outcome == "clean"
        # A fresh gate (empty memory cache) finds the verdict in the journal: no scan.
        gate2 = Gate(env.config, env.pool, env.journal, env.actions, source_fd=env.source_fd)
        fd = os.open(env.source / "a/clean.txt", os.O_RDONLY)
        try:
            await gate2.on_open(b"a/clean.txt", fd, os.fstat(fd), os.O_RDONLY, CTX)
        finally:
            os.close(fd)
        assert gate2.stats.scans == 0 and gate2.stats.cache_misses == 1


async def test_a_change_behind_our_back_is_rescanned(tmp_path: Path) -> None:
    async with gate_env(tmp_path) as env:
        env.write("f", b"one\n")
        await env.open("f")
        env.write("f", b"two, longer\n")
        await env.open("f")
        assert env.gate.stats.scans == 2


async def test_eicar_is_denied_quarantined_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vfile")
    async with gate_env(tmp_path) as env:
        env.write("up/evil.com", EICAR)
        ident = env.identity("up/evil.com")
        with pytest.raises(Denied) as info:
            await env.open("up/evil.com")
        assert info.value.errno == errno.EACCES
        assert EICAR_NAME in info.value.reason
        await env.gate.wait_idle()
        assert not (env.source / "up/evil.com").exists()
        [quarantined] = list(env.qdir.iterdir())
        assert quarantined.read_bytes() == EICAR
        assert stat.S_IMODE(quarantined.stat().st_mode) == 0o600
        assert stat.S_IMODE(env.qdir.stat().st_mode) == 0o700
        [rec] = env.journal.list_quarantine()
        assert rec.original_path == "up/evil.com" and rec.signature == EICAR_NAME
        assert rec.quarantine_path == str(quarantined) and rec.identity == ident
        lines = [r.getMessage() for r in caplog.records if "infected" in r.getMessage()
                 and r.levelno >= logging.WARNING]
        assert len(lines) == 1
        assert all(w in lines[0] for w in ("up/evil.com", EICAR_NAME, "default", "quarantine"))
        assert env.gate.stats.infections == 1 and env.gate.stats.denials == 1


@pytest.mark.parametrize("fault", ["refuse", "garbage"])
@pytest.mark.parametrize("mode", ["closed", "open", "safe"])
async def test_fail_modes_on_appliance_error(tmp_path: Path, mode: str, fault: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vfile")
    async with gate_env(tmp_path, profile_toml(mode)) as env:
        env.write("doc.txt", b"some text\n")
        env.appliance.set_fault(Fault(fault))  # type: ignore[arg-type]
        with trio.fail_after(1.0 + MARGIN):
            if mode == "closed":
                with pytest.raises(Denied) as info:
                    await env.open("doc.txt")
                assert info.value.errno == errno.EACCES
                assert any("doc.txt" in r.getMessage() and "no verdict within 1s"
                           in r.getMessage() for r in caplog.records)
            else:
                await env.open("doc.txt")
        entry = env.journal.get_deferred("doc.txt")
        if mode == "safe":
            assert entry is not None and entry.reason in (Reason.ERROR, Reason.UNAVAILABLE)
            assert entry.identity == env.identity("doc.txt") and entry.profile == "default"
            [exp] = entry.exposures
            assert (exp.uid, exp.pid) == (CTX.uid, CTX.pid) and exp.command != ""
        else:
            assert entry is None
        assert env.gate.stats.exposures == (0 if mode == "closed" else 1)


@pytest.mark.parametrize("mode", ["closed", "open", "safe"])
async def test_fail_modes_on_a_black_holed_appliance(tmp_path: Path, mode: str) -> None:
    async with gate_env(tmp_path, profile_toml(mode, "500ms")) as env:
        env.write("doc.txt", b"some text\n")
        env.appliance.set_fault(Fault("blackhole"))
        with trio.fail_after(0.5 + MARGIN):
            if mode == "closed":
                with pytest.raises(Denied):
                    await env.open("doc.txt")
            else:
                await env.open("doc.txt")
        # safe: the entry is durable when the open returns, not some time later
        entry = env.journal.get_deferred("doc.txt")
        assert (entry is not None) is (mode == "safe")
        if entry is not None:
            assert entry.reason in (Reason.TIMEOUT, Reason.ERROR, Reason.UNAVAILABLE)
            assert len(entry.exposures) == 1


async def test_a_known_down_appliance_is_not_waited_on(tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("safe", "5s"), probe_interval=0.05) as env:
        env.write("doc.txt", b"x\n")
        env.appliance.set_fault(Fault("refuse"))
        await until(lambda: not env.pool.available())
        with trio.fail_after(1.0):  # well under the 5 s deadline
            await env.open("doc.txt")
        assert env.gate.stats.scans == 0
        entry = env.journal.get_deferred("doc.txt")
        assert entry is not None and entry.reason is Reason.UNAVAILABLE
        # Back up: the next open scans, and the clean verdict resolves the entry.
        env.appliance.set_fault(None)
        with trio.fail_after(MARGIN):
            await env.pool.wait_available()
        await env.open("doc.txt")
        await env.gate.wait_idle()
        assert env.gate.stats.scans == 1
        assert env.journal.get_deferred("doc.txt") is None


async def test_concurrent_opens_share_one_scan(tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("closed", "5s")) as env:
        env.write("big.bin", b"y" * 100_000)
        env.appliance.set_fault(Fault("delay", 0.3))
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(env.open, "big.bin")
        assert env.gate.stats.scans == 1
        assert env.gate.stats.shared == 7
        assert env.gate.stats.denials == 0


async def test_a_cancelled_waiter_does_not_cancel_the_shared_scan(tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("closed", "5s")) as env:
        env.write("f.bin", b"z" * 1000)
        env.appliance.set_fault(Fault("delay", 0.3))
        done: list[str] = []

        async def interrupted() -> None:
            with trio.move_on_after(0.05):  # a FUSE interrupt
                await env.open("f.bin")
            done.append("interrupted")

        async def patient() -> None:
            await trio.sleep(0.01)
            await env.open("f.bin")
            done.append("patient")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupted)
            nursery.start_soon(patient)
        assert done == ["interrupted", "patient"]
        assert env.gate.stats.scans == 1 and env.gate.stats.denials == 0


async def test_signature_version_change_causes_a_rescan(tmp_path: Path) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "a.hdb").write_text(f"{'0' * 32}:5:Vfile.Test.Nothing\n")
    async with gate_env(tmp_path, probe_interval=0.05, sigdir=sigdir) as env:
        env.write("f", b"data\n")
        await env.open("f")
        await env.open("f")
        assert env.gate.stats.scans == 1
        before = env.pool.signature_version()
        (sigdir / "a.hdb").write_text(f"{'1' * 32}:5:Vfile.Test.Other\n")
        env.appliance.reload()
        await until(lambda: env.pool.signature_version() != before)
        await trio.sleep(2 * SIG_CACHE_S)  # the gate reuses the version it asked for briefly
        await env.open("f")
        assert env.gate.stats.scans == 2


async def test_write_intent_is_durable_and_the_last_close_resolves_it(tmp_path: Path) -> None:
    async with gate_env(tmp_path) as env:
        env.write("w.txt", b"old\n")
        await env.open("w.txt")
        fd = os.open(env.source / "w.txt", os.O_WRONLY | os.O_TRUNC)
        try:
            await env.gate.on_write_intent(b"w.txt", os.fstat(fd), CTX)
            entry = env.journal.get_deferred("w.txt")  # durable before the hook returned
            assert entry is not None and entry.reason is Reason.MODIFIED
            os.write(fd, b"new content\n")
            # While the intent is open, the file is not clean: an open scans it.
            scans = env.gate.stats.scans
            await env.open("w.txt")
            assert env.gate.stats.scans == scans + 1
            assert env.journal.get_deferred("w.txt") is not None
            await env.gate.on_last_close(b"w.txt", fd, os.fstat(fd))
        finally:
            os.close(fd)
        await env.gate.wait_idle()
        assert env.journal.get_deferred("w.txt") is None
        rec = env.journal.get_verdict(env.identity("w.txt"), env.pool.signature_version())
        assert rec is not None and rec.outcome == "clean"
        assert env.gate.statistics()["pending_intents"] == 0


async def test_an_infected_write_is_caught_after_close(tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("safe", extra='infected_action="delete"\n')) as env:
        await env.gate.on_write_intent(b"new.com", None, CTX)
        env.write("new.com", EICAR)
        await env.gate.on_last_close(b"new.com", None, os.stat(env.source / "new.com"))
        await env.gate.wait_idle()
        assert not (env.source / "new.com").exists()
        assert env.journal.get_deferred("new.com") is None
        assert env.gate.stats.infections == 1


async def test_a_failed_close_scan_leaves_the_entry_with_the_new_identity(
        tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("safe", "500ms")) as env:
        env.write("w.txt", b"old\n")
        await env.gate.on_write_intent(b"w.txt", os.stat(env.source / "w.txt"), CTX)
        env.write("w.txt", b"new and longer\n")
        env.appliance.set_fault(Fault("blackhole"))
        await env.gate.on_last_close(b"w.txt", None, os.stat(env.source / "w.txt"))
        with trio.fail_after(0.5 + MARGIN):
            await env.gate.wait_idle()
        entry = env.journal.get_deferred("w.txt")
        assert entry is not None and entry.reason is Reason.MODIFIED
        assert entry.identity == env.identity("w.txt")


async def test_window_cancels_waits_at_once(tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("safe", "30s")) as env:
        for i in range(4):
            env.write(f"f{i}", f"file {i}\n".encode())
        env.appliance.set_fault(Fault("blackhole"))
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(env.open, f"f{i}")
            await until(lambda: env.gate.statistics()["in_flight"] == 4)
            with trio.fail_after(MARGIN):  # far less than the 30 s deadline
                env.gate.set_window(True)
                await env.gate.wait_idle()
        for i in range(4):
            entry = env.journal.get_deferred(f"f{i}")
            assert entry is not None and entry.reason is Reason.WINDOW
        # During the window no appliance is contacted at all.
        env.write("g", b"g\n")
        await env.open("g")
        assert env.gate.stats.scans == 4
        env.gate.set_window(False)
        env.appliance.set_fault(None)
        await env.open("g")
        assert env.gate.stats.scans == 5


async def test_window_in_a_closed_profile_denies_at_once(tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("closed", "30s")) as env:
        env.write("f", b"f\n")
        env.gate.set_window(True)
        with trio.fail_after(1.0), pytest.raises(Denied):
            await env.open("f")
        assert env.gate.stats.scans == 0


@pytest.mark.parametrize(("rule", "outcome"), [("deny", "denied"), ("journal", "deferred"),
                                               ("scan-first", "scanned")])
async def test_oversize_rules(tmp_path: Path, rule: str, outcome: str) -> None:
    extra = f'max_size="1KiB"\noversize="{rule}"\n'
    if rule == "scan-first":
        extra += 'scan_first="512"\n'
    async with gate_env(tmp_path, profile_toml("safe", extra=extra)) as env:
        env.write("big", b"b" * 4096)
        if outcome == "denied":
            with pytest.raises(Denied):
                await env.open("big")
        else:
            await env.open("big")
        entry = env.journal.get_deferred("big")
        assert (entry is not None and entry.reason is Reason.OVERSIZE) is (outcome == "deferred")
        assert env.gate.stats.scans == (1 if outcome == "scanned" else 0)


async def test_untriggered_profiles_are_not_scanned(tmp_path: Path) -> None:
    config = '[[profile]]\nname="tmp"\npaths=["tmp/**"]\ntriggers=[]\n'
    async with gate_env(tmp_path, config) as env:
        env.write("tmp/x", b"x")
        await env.open("tmp/x")
        await env.gate.on_write_intent(b"tmp/x", None, CTX)
        assert env.gate.stats.scans == 0
        assert env.journal.get_deferred("tmp/x") is None


async def test_rename_and_unlink_follow_the_journal(tmp_path: Path) -> None:
    async with gate_env(tmp_path) as env:
        env.write("a", b"a")
        await env.gate.on_write_intent(b"a", None, CTX)
        os.rename(env.source / "a", env.source / "b")
        await env.gate.on_rename(b"a", b"b")
        assert env.journal.get_deferred("a") is None
        assert env.journal.get_deferred("b") is not None
        assert env.gate.statistics()["pending_intents"] == 1
        os.unlink(env.source / "b")
        await env.gate.on_unlink(b"b")
        assert env.journal.get_deferred("b") is None
        assert env.gate.statistics()["pending_intents"] == 0


async def test_statistics_keys(tmp_path: Path) -> None:
    async with gate_env(tmp_path) as env:
        stats = env.gate.statistics()
        for key in ("scans", "cache_hits", "cache_misses", "infections", "exposures",
                    "deferrals", "denials", "in_flight"):
            assert stats[key] == 0


async def test_a_write_only_open_is_not_scanned(tmp_path: Path) -> None:
    async with gate_env(tmp_path) as env:
        env.write("f", b"f\n")
        await env.open("f", os.O_WRONLY)
        assert env.gate.stats.scans == 0


async def test_an_open_deferred_during_a_write_does_not_strand_the_intent(
        tmp_path: Path) -> None:
    async with gate_env(tmp_path, profile_toml("safe", "500ms"), probe_interval=0.05) as env:
        env.write("w", b"old\n")
        await env.gate.on_write_intent(b"w", os.stat(env.source / "w"), CTX)
        env.write("w", b"new content\n")
        env.appliance.set_fault(Fault("refuse"))
        await until(lambda: not env.pool.available())
        await env.open("w")  # deferred again: the same journal entry gets a new seq
        env.appliance.set_fault(None)
        with trio.fail_after(MARGIN):
            await env.pool.wait_available()
        await env.gate.on_last_close(b"w", None, os.stat(env.source / "w"))
        await env.gate.wait_idle()
        assert env.journal.get_deferred("w") is None
        assert env.gate.statistics()["pending_intents"] == 0
