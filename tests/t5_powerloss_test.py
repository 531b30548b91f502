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

from pathlib import Path

import pytest
from mounting import is_mounted, mounted
from outage import running_appliance, unaccounted
from powercut import FILES, config, create_and_kill, cut_dirs
from statedisks import cutfs

from vfile.journal import Journal

pytestmark = pytest.mark.mount



def _create_kill_cut(tmp: Path, env: dict[str, str]) -> tuple[Path, Path, str, list[str]]:
    """Mount once cleanly (the signature version), then create FILES files, SIGKILL,
    cut; then start vfile again with `env`, stop it cleanly. Returns (source, state
    dir, signature version, files unaccounted right after the cut)."""
    src, mnt, disk, statefs = cut_dirs(tmp)
    cfg = config(tmp)
    state = statefs / "state"
    args = ("--config", str(cfg), "--state-dir", str(state))
    with running_appliance() as app:
        with cutfs(disk, statefs):
            sig = create_and_kill(src, mnt, state, ("--appliance", app.url, *args))
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
    cfg = config(tmp_path)
    args = ("--config", str(cfg), "--state-dir", str(state))
    with running_appliance() as app:
        sig = create_and_kill(src, mnt, state, ("--appliance", app.url, *args), settle=True)
        assert unaccounted(src, state, sig) == []
        with mounted(src, mnt, "--appliance", app.url, *args, "-v") as again:
            text = again.log()  # the decision is logged before the mount serves
        assert "page cache survived" in text
        assert "recovery walk" not in text
