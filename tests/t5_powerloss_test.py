"""A simulated power loss under the journal: creates are tier 1w (committed, not
fsynced), and the recovery walk must give every file they made an entry.

The state directory lives on `tests/cutfs.py`, a FUSE filesystem that keeps
every file's bytes in memory in two versions and makes the current one durable
only on fsync. Files are created through a vfile mount whose background sync
is far away (60 s), so no create's intent is fsynced; the server gets SIGKILL;
then the cut: cutfs is killed and remounted serving only what was fsynced (the
source, on the real disk, keeps every file: the worst case, files whose intents
are gone). vfile then starts again on the cut journal, and before it serves,
its recovery walk must have journaled every file created since the watermark
(journal.watermark, README "Durability of journal records").

The second test runs the same scenario with the walk switched off
(VFILE_RECOVERY_WALK=off) and shows files left with neither a verdict nor a
journal entry: the cut does lose the intents, and the walk is what saves them.
A third shows the other side of the witness: after a SIGKILL alone (the page
cache survives) the next start does not walk.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import force_unmount, is_mounted, mounted, stop_process, vfile_cmd, wait_for
from outage import running_appliance, signature_version, unaccounted, write_config

from vfile.journal import Journal

pytestmark = pytest.mark.mount

CUTFS = Path(__file__).with_name("cutfs.py")
FILES = 40


@contextlib.contextmanager
def cutfs(backing: Path, mnt: Path) -> Iterator[subprocess.Popen[bytes]]:
    """cutfs serving `backing` on `mnt`; killed (SIGKILL: nothing more reaches
    `backing`) and unmounted on exit."""
    log = backing.parent / "cutfs.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, str(CUTFS), str(backing), str(mnt)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for("cutfs to mount", lambda: is_mounted(mnt) or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        force_unmount(mnt)
        stop_process(proc)


def _config(tmp: Path) -> Path:
    cfg = write_config(tmp / "vfile.toml", fail_mode="safe", deadline=2.0)
    # No background fsync during the test: every create's intent stays unsynced.
    with cfg.open("a") as f:
        f.write('\n[journal]\nsync_interval = "60s"\n')
    return cfg


def _create_and_kill(src: Path, mnt: Path, state: Path, args: tuple[str, ...], *,
                     subdir: str = "", settle: bool = False) -> str:
    """Mount once cleanly (the signature version is learnt and persisted), then create
    FILES files (in `subdir`) through a second mount and SIGKILL its server (`settle`:
    once no create's intent is in flight any more); the signature version."""
    with mounted(src, mnt, *args):
        wait_for("the signature version", lambda: (
            (mnt / "warm").write_bytes(b"warm-up"), (mnt / "warm").read_bytes(),
            signature_version(state))[-1], 30)
    sig = signature_version(state)
    with mounted(src, mnt, *args) as server:
        if subdir:
            (mnt / subdir).mkdir()
        for i in range(FILES):
            (mnt / subdir / f"new{i}").write_bytes(b"created %d" % i)
        if settle:  # a create does not wait for its intent's commit (journal.inflight)
            wait_for("no intent in flight", lambda: _durability(mnt)["in_flight"] == 0, 30)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    return sig


def _durability(mnt: Path) -> dict[str, int]:
    res = subprocess.run(vfile_cmd("status", str(mnt), "--json"),
                         capture_output=True, text=True, timeout=30, check=True)
    out: dict[str, int] = json.loads(res.stdout)["journal"]["durability"]
    return out


def _create_kill_cut(tmp: Path, env: dict[str, str]) -> tuple[Path, Path, str, list[str]]:
    """Mount once cleanly (the signature version), then create FILES files, SIGKILL,
    cut; then start vfile again with `env`, stop it cleanly. Returns (source, state
    dir, signature version, files unaccounted right after the cut)."""
    src, mnt, disk, statefs = (tmp / n for n in ("src", "mnt", "disk", "statefs"))
    for p in (src, mnt, disk, statefs):
        p.mkdir()
    cfg = _config(tmp)
    state = statefs / "state"
    args = ("--config", str(cfg), "--state-dir", str(state))
    with running_appliance() as app:
        with cutfs(disk, statefs):
            sig = _create_and_kill(src, mnt, state, ("--appliance", app.url, *args))
        # The cut: cutfs is gone with everything not fsynced; it comes back without it.
        with cutfs(disk, statefs):
            lost = unaccounted(src, state, sig)
            with mounted(src, mnt, "--appliance", app.url, *args, env=env):
                pass  # the recovery walk runs before the mount serves
            assert not is_mounted(mnt)
            journal = Journal.open(state, readonly=True)
            try:
                assert journal.check() == []
            finally:
                journal.close()
            return src, state, sig, lost


def _unaccounted_on_cutfs(tmp: Path, src: Path, sig: str) -> list[str]:
    with cutfs(tmp / "disk", tmp / "statefs"):
        return unaccounted(src, tmp / "statefs" / "state", sig)


def test_power_loss_after_creates_leaves_nothing_unjournaled(tmp_path: Path) -> None:
    src, _state, sig, lost = _create_kill_cut(tmp_path, {})
    # The cut did take the creates' intents away (else this test proves nothing) ...
    assert len(lost) >= FILES // 2, f"the cut lost too little to show anything: {lost}"
    # ... and the recovery walk journaled every file they made.
    assert _unaccounted_on_cutfs(tmp_path, src, sig) == []


def test_without_the_recovery_walk_the_power_loss_loses_creates(tmp_path: Path) -> None:
    src, _state, sig, lost = _create_kill_cut(tmp_path, {"VFILE_RECOVERY_WALK": "off"})
    assert lost
    still = _unaccounted_on_cutfs(tmp_path, src, sig)
    assert set(still) >= {f"new{i}" for i in range(FILES)} & set(lost), still


def test_a_process_crash_keeps_the_creates_without_a_walk(tmp_path: Path) -> None:
    """SIGKILL alone, once no create's intent is in flight: the page cache survives,
    every tier-1w intent is in the journal, and the next start says so rather than
    walking (with intents in flight it walks: tests/t5_inflight_test.py)."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    for p in (src, mnt):
        p.mkdir()
    cfg = _config(tmp_path)
    args = ("--config", str(cfg), "--state-dir", str(state))
    with running_appliance() as app:
        sig = _create_and_kill(src, mnt, state, ("--appliance", app.url, *args), settle=True)
        assert unaccounted(src, state, sig) == []
        with mounted(src, mnt, "--appliance", app.url, *args, "-v") as again:
            text = again.log()  # the decision is logged before the mount serves
        assert "page cache survived" in text
        assert "recovery walk" not in text
