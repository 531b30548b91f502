"""The hypervisor freeze/thaw hooks in examples/, run as the guest agents run them,
against a live scanning mount whose mountpoint has a space in it (as /proc/mounts
escapes it).

qemu-guest-agent runs every executable in /etc/qemu/fsfreeze-hook.d/ with
``freeze`` or ``thaw``; VMware Tools runs /etc/vmware-tools/backupScripts.d/*
with ``freeze``, ``thaw`` or ``freezeFail``, and the legacy
/usr/sbin/pre-freeze-script and post-thaw-script with no argument.

The hooks find vfile mounts in /proc/mounts; other engineers' test mounts may
be live on this machine, so the test hands the hook (VFILE_MOUNTS) a copy of
/proc/mounts cut down to its own line — the line as the kernel wrote it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mounting import mounted, vfile_cmd

from vfile.mount import parse_mounts

pytestmark = pytest.mark.mount

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QEMU_HOOK = EXAMPLES / "qemu-ga" / "fsfreeze-hook.d" / "vfile"
VMWARE = EXAMPLES / "vmware-tools"


def window_active(mnt: Path) -> bool:
    res = subprocess.run(vfile_cmd("status", str(mnt), "--json"), capture_output=True,
                         text=True, check=True, timeout=60)
    return bool(json.loads(res.stdout)["window"]["active"])


def own_mounts_line(mnt: Path) -> str:
    with open("/proc/self/mounts") as f:
        lines = [ln for ln in f.read().splitlines()
                 if parse_mounts(ln) == [(str(mnt), "fuse.vfile")]]
    assert len(lines) == 1, lines
    assert "\\040" in lines[0]  # the kernel escaped the space; the hook must decode it
    return lines[0] + "\n"


def hook(script: Path, *args: str, mounts: Path) -> subprocess.CompletedProcess[str]:
    # What an installation provides: `vfile` on PATH (pip's console script).
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
           "VFILE_MOUNTS": str(mounts)}
    return subprocess.run([str(script), *args], capture_output=True, text=True, check=False,
                          timeout=60, env=env)


def test_freeze_and_thaw_hooks_steer_the_window(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt point"
    src.mkdir()
    mnt.mkdir()
    (src / "data.txt").write_text("payload")
    with mounted(src, mnt, "--state-dir", str(tmp_path / "state")):
        mounts = tmp_path / "mounts"
        mounts.write_text(own_mounts_line(mnt))
        assert not window_active(mnt)

        res = hook(QEMU_HOOK, "freeze", mounts=mounts)
        assert res.returncode == 0, res.stderr
        assert f"freeze {mnt}: quiesced" in res.stdout
        assert window_active(mnt)
        assert (mnt / "data.txt").read_text() == "payload"  # I/O goes on in the window
        res = hook(QEMU_HOOK, "thaw", mounts=mounts)
        assert res.returncode == 0, res.stderr
        assert not window_active(mnt)

        # VMware Tools, legacy scripts: no argument, the name says what to do.
        assert hook(VMWARE / "pre-freeze-script", mounts=mounts).returncode == 0
        assert window_active(mnt)
        assert hook(VMWARE / "post-thaw-script", mounts=mounts).returncode == 0
        assert not window_active(mnt)
        # VMware Tools, backupScripts.d: a failed freeze is undone with freezeFail.
        assert hook(VMWARE / "backupScripts.d" / "vfile", "freeze", mounts=mounts)\
            .returncode == 0
        assert window_active(mnt)
        assert hook(VMWARE / "backupScripts.d" / "vfile", "freezeFail", mounts=mounts)\
            .returncode == 0
        assert not window_active(mnt)

        # One dead mount in the table: the live one is still frozen, the status says 1.
        dead = tmp_path / "gone"
        mounts.write_text(f"/srv {dead} fuse.vfile rw 0 0\n" + own_mounts_line(mnt))
        res = hook(QEMU_HOOK, "freeze", mounts=mounts)
        assert res.returncode == 1
        assert f"freeze {dead} failed" in res.stderr and str(mnt) not in res.stderr
        assert window_active(mnt)
        res = hook(QEMU_HOOK, "thaw", mounts=mounts)
        assert res.returncode == 1 and not window_active(mnt)

        # Unknown action: 2, nothing touched. No vfile mount at all: 0.
        res = hook(QEMU_HOOK, "snapshot", mounts=mounts)
        assert res.returncode == 2 and "unknown action" in res.stderr
        assert not window_active(mnt)
        mounts.write_text("proc /proc proc rw 0 0\n")
        assert hook(QEMU_HOOK, "freeze", mounts=mounts).returncode == 0
        assert not window_active(mnt)


def test_hook_defaults_to_proc_mounts() -> None:
    # Without VFILE_MOUNTS the hook reads /proc/mounts; with the action wrong it
    # stops before touching any mount (other tests' mounts may be live here).
    res = subprocess.run([str(QEMU_HOOK), "bogus"], capture_output=True, text=True,
                         check=False, timeout=60, env={"PATH": os.environ["PATH"]})
    assert res.returncode == 2
    assert "/proc/mounts" in QEMU_HOOK.read_text()
