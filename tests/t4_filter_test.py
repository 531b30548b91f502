"""The filter through a real mount: verdicts (EICAR, clean files, remount, signatures).

Every test mounts with `mounted` (a `vfile mount --foreground` subprocess)
and scans through a real appliance in a separate process: the built-in one
(`vfile appliance serve`, faults switched with a fault file and SIGUSR1,
signatures reloaded with SIGHUP), the fault proxy in front of it (`vfile
appliance proxy`), or real clamd over FILDES. tests/t4_filter_outage_test.py
has the outages and fail modes and imports the helpers defined here.

Timing is only ever asserted as "does not hang": a generous margin on top of
the profile's deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mounting import Server, mounted, vfile_cmd, wait_for
from outage import running_appliance
from servers import EICAR_HDB_NAME, GENERATED_NAME, Clamd, Samples

from vfile import control
from vfile.journal.store import Journal
from vfile.scanner.signatures import EICAR, EICAR_NAME

pytestmark = pytest.mark.mount

#: the profile deadline the tests mount with (seconds)
DEADLINE = 1.0
#: generous "does not hang" margin on top of a deadline
MARGIN = 3.0
#: how long to wait for something the mount does in the background
SETTLE = 15.0
#: small probe interval and timeouts, so outages are noticed quickly
POOL_TOML = """\
[pool]
attempt_timeout = "500ms"
probe_interval = "200ms"
breaker_cooldown = "{cooldown}"
"""


# --- the mount ---------------------------------------------------------------------------


@dataclass
class Filter:
    """A live filtering mount and where its state lives."""

    server: Server
    state: Path

    @property
    def mnt(self) -> Path:
        return self.server.mountpoint

    @property
    def src(self) -> Path:
        return self.server.source

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = control.call(self.mnt, "status", timeout=10)
        return result

    def gate(self) -> dict[str, Any]:
        gate: dict[str, Any] = self.status()["gate"]
        return gate

    def wait_appliance(self, healthy: bool) -> None:
        """Until the mount's pool (probe / breaker) sees every appliance up, or all down."""
        wait_for(f"appliances healthy={healthy}", lambda: all(
            (a["healthy"] and a["state"] == "closed") == healthy
            for a in self.status()["appliances"]))

    def wait_idle(self) -> None:
        """Until no scan is in flight and no background (close) scan is pending."""
        wait_for("the gate to be idle", lambda: (g := self.gate())["in_flight"] == 0
                 and g["pending_intents"] == 0)


def config_file(tmp_path: Path, *, cooldown: str = "60s", extra: str = "") -> Path:
    path = tmp_path / "vfile.toml"
    path.write_text(POOL_TOML.format(cooldown=cooldown) + extra)
    return path


@contextlib.contextmanager
def filtering(tmp_path: Path, *args: str, cooldown: str = "60s", state: Path | None = None,
              src: Path | None = None) -> Iterator[Filter]:
    """Mount tmp_path/src on tmp_path/mnt with scanning, the journal in tmp_path/state."""
    src = src or tmp_path / "src"
    mnt = tmp_path / "mnt"
    state = state or tmp_path / "state"
    src.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    cfg = config_file(tmp_path, cooldown=cooldown)
    with mounted(src, mnt, "--state-dir", str(state), "--config", str(cfg),
                 "--timeout", str(DEADLINE), *args) as server:
        yield Filter(server, state)


def vfile_json(*args: str) -> Any:
    res = subprocess.run(vfile_cmd(*args, "--json"), capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def journal_list(state: Path) -> dict[str, dict[str, Any]]:
    """`vfile journal list --state-dir STATE --json`, by path."""
    return {e["path"]: e for e in vfile_json("journal", "list", "--state-dir", str(state))}


def journal_paths(state: Path) -> set[str]:
    """The deferred paths, read in-process (read-only, next to the live mount)."""
    j = Journal.open(state, readonly=True)
    try:
        return {e.path for e in j.list_deferred()}
    finally:
        j.close()


@dataclass
class Opened:
    elapsed: float
    data: bytes | None
    errno: int | None
    pid: int  # the thread the kernel saw open the file
    command: str


def timed_read(path: Path, limit: float) -> Opened:
    """Open and read `path` in a thread; fail if it takes longer than `limit` (a hang)."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["pid"] = threading.get_native_id()
        out["command"] = Path(f"/proc/self/task/{out['pid']}/comm").read_text().strip()
        t0 = time.monotonic()
        try:
            with open(path, "rb") as f:
                out["data"] = f.read()
        except OSError as err:
            out["errno"] = err.errno
        out["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit)
    # The mount's teardown (`mounted`) kills the server, which releases a stuck thread.
    assert not th.is_alive(), f"open of {path} did not return within {limit}s"
    return Opened(out["elapsed"], out.get("data"), out.get("errno"), out["pid"], out["command"])


def assert_quarantined(f: Filter, rel: str, content: bytes, signature: str) -> None:
    """`rel` is gone from the source and sits 0600 in the 0700 quarantine, recorded."""
    qdir = f.state / "quarantine"
    wait_for(f"{rel} to leave the source", lambda: not (f.src / rel).exists())
    assert stat.S_IMODE(qdir.stat().st_mode) == 0o700
    records = [r for r in vfile_json("quarantine", "list", "--state-dir", str(f.state))
               if r["original_path"] == rel]
    assert len(records) == 1, records
    rec = records[0]
    assert signature in rec["signature"], rec
    qfile = Path(rec["quarantine_path"])
    assert qfile.parent == qdir
    assert stat.S_IMODE(qfile.stat().st_mode) == 0o600
    assert qfile.read_bytes() == content


# --- tests -------------------------------------------------------------------------------


def test_eicar_denied_and_quarantined_clean_served_builtin(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "eicar.com").write_bytes(EICAR)
    (src / "sub").mkdir()
    (src / "sub" / "clean.txt").write_bytes(b"nothing to see\n" * 1000)
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        got = timed_read(f.mnt / "sub" / "clean.txt", DEADLINE + MARGIN)
        assert got.data == b"nothing to see\n" * 1000
        got = timed_read(f.mnt / "eicar.com", DEADLINE + MARGIN)
        assert got.errno == errno.EACCES
        assert_quarantined(f, "eicar.com", EICAR, EICAR_NAME)
        # The kernel may keep its dentry for ENTRY_TIMEOUT; then the mount agrees.
        wait_for("eicar.com to leave the mount", lambda: not (f.mnt / "eicar.com").exists(), 5)
        # The clean file's verdict is cached: opening it again scans nothing.
        before = f.gate()["scans"]
        assert (f.mnt / "sub" / "clean.txt").read_bytes() == b"nothing to see\n" * 1000
        gate = f.gate()
        assert gate["scans"] == before == 2
        assert gate["infections"] == 1 and gate["denials"] == 1
        assert journal_list(f.state) == {}
        assert "infected: 'eicar.com' signature " + EICAR_NAME in f.server.log()


def test_eicar_written_through_the_mount_is_quarantined_after_close(tmp_path: Path) -> None:
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        (f.mnt / "upload.txt").write_bytes(b"fine\n")
        with open(f.mnt / "dropped.com", "wb") as out:
            out.write(EICAR)
            # Intent before effect: journaled while the writer still has it open.
            assert "dropped.com" in journal_paths(f.state)
        assert_quarantined(f, "dropped.com", EICAR, EICAR_NAME)
        f.wait_idle()
        # Both close scans resolved their intents: nothing left for the drain.
        assert journal_list(f.state) == {}
        assert f.gate()["close_scans"] == 2
        assert (f.mnt / "upload.txt").read_bytes() == b"fine\n"
        assert f.gate()["scans"] == 0  # the close scan's verdict serves the open


@pytest.mark.clamd
def test_real_clamd_over_fildes(tmp_path: Path, clamd_server: Clamd,
                                samples: Samples) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(samples.eicar, src / "eicar.com")
    shutil.copy(samples.generated, src / "generated.bin")
    shutil.copy(samples.clean, src / "clean.txt")
    log_before = clamd_server.log.read_text(errors="replace") if clamd_server.log.exists() \
        else ""
    with filtering(tmp_path, "--appliance", clamd_server.unix_url) as f:
        got = timed_read(f.mnt / "clean.txt", DEADLINE + MARGIN)
        assert got.data == samples.clean.read_bytes()
        assert timed_read(f.mnt / "eicar.com", DEADLINE + MARGIN).errno == errno.EACCES
        assert timed_read(f.mnt / "generated.bin", DEADLINE + MARGIN).errno == errno.EACCES
        assert_quarantined(f, "eicar.com", EICAR, EICAR_HDB_NAME)
        assert_quarantined(f, "generated.bin", samples.generated.read_bytes(), GENERATED_NAME)
        (app,) = f.status()["appliances"]
        assert app["url"] == clamd_server.unix_url and app["sig_version"].startswith("ClamAV")
        assert f.gate()["scans"] == 3
    # FILDES: clamd got the descriptor itself, so it names the source file (resolved
    # through /proc); a stream (INSTREAM) would be logged as "stream(...)".
    new_log = clamd_server.log.read_text(errors="replace")[len(log_before):]
    assert f"{os.path.realpath(src)}/eicar.com: {EICAR_HDB_NAME}" in new_log, new_log
    assert "stream" not in new_log, new_log


def test_verdicts_survive_a_remount(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "clean.txt").write_bytes(b"clean\n")
    (src / "eicar.com").write_bytes(EICAR)
    with running_appliance() as app:
        with filtering(tmp_path, "--appliance", app.url, "--fail-mode", "closed") as f:
            assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
            assert f.gate()["scans"] == 1
        with filtering(tmp_path, "--appliance", app.url, "--fail-mode", "closed") as f:
            assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
            gate = vfile_json("status", str(f.mnt))["gate"]
            assert gate["scans"] == 0, gate  # the verdict came from the journal
            assert gate["cache_misses"] == 1
            # A change behind vfile's back changes the identity: scanned again.
            # (Same length: the kernel may still cache the old size for ATTR_TIMEOUT.)
            (src / "clean.txt").write_bytes(b"CLEAN\n")
            assert (f.mnt / "clean.txt").read_bytes() == b"CLEAN\n"
            assert f.gate()["scans"] == 1


def test_signature_update_causes_a_rescan(tmp_path: Path,
                                          samples: Samples) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "other.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(samples.generated, src / "generated.bin")
    (src / "clean.txt").write_bytes(b"clean\n")
    with running_appliance(sigdir) as app, \
            filtering(tmp_path, "--appliance", app.url) as f:
        assert timed_read(f.mnt / "generated.bin", DEADLINE + MARGIN).data is not None
        assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
        (old,) = f.status()["appliances"]
        assert f.gate()["scans"] == 2
        # New signatures that know the generated file; the appliance reloads on SIGHUP.
        shutil.copy(samples.sigdir / "vfile-test.hdb", sigdir / "vfile-test.hdb")
        app.reload()
        wait_for("the new signature version", lambda: f.status()["appliances"][0]["sig_version"]
                 != old["sig_version"])
        assert timed_read(f.mnt / "generated.bin", DEADLINE + MARGIN).errno == errno.EACCES
        assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
        assert f.gate()["scans"] == 4  # both rescanned under the new version
        # (the infected action runs after the open is denied)
        assert_quarantined(f, "generated.bin", samples.generated.read_bytes(), GENERATED_NAME)
        assert f.gate()["infections"] == 1
