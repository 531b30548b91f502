"""The power-cut scenario shared by the power-loss tests: mount once cleanly,
create FILES files through a second mount whose background sync is far away,
SIGKILL its server (README "Durability of journal records", tier 1w).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from mounting import mounted, wait_for
from outage import signature_version, write_config
from statedisks import durability

from vfile import control
from vfile.journal import environment, watermark

FILES = 40


def cut_dirs(tmp: Path) -> tuple[Path, Path, Path, Path]:
    """The source, the mount point, cutfs's backing directory and its mount point."""
    src, mnt, disk, statefs = (tmp / n for n in ("src", "mnt", "disk", "statefs"))
    for p in (src, mnt, disk, statefs):
        p.mkdir()
    return src, mnt, disk, statefs


def learn_signature(src: Path, mnt: Path, state: Path, args: tuple[str, ...],
                    names: list[str]) -> str:
    """Mount once cleanly and read `names` (scanned clean: verdicts, and the signature
    version learnt and persisted); that version."""
    with mounted(src, mnt, *args):
        wait_for("the signature version", lambda: (
            [(mnt / n).read_bytes() for n in names], signature_version(state))[-1], 30)
    return signature_version(state)


def config(tmp: Path) -> Path:
    cfg = write_config(tmp / "vfile.toml", fail_mode="safe", deadline=2.0)
    # No background fsync during the test: every create's intent stays unsynced.
    with cfg.open("a") as f:
        f.write('\n[journal]\nsync_interval = "60s"\n')
    return cfg


def create_and_kill(src: Path, mnt: Path, state: Path, args: tuple[str, ...], *,
                     subdir: str = "", settle: bool = False) -> str:
    """Mount once cleanly (the signature version is learnt and persisted), then create
    FILES files (in `subdir`) through a second mount and SIGKILL its server (`settle`:
    once no create's intent is in flight any more); the signature version."""
    (src / "warm").write_bytes(b"warm-up")
    sig = learn_signature(src, mnt, state, args, ["warm"])
    with mounted(src, mnt, *args) as server:
        if subdir:
            (mnt / subdir).mkdir()
        for i in range(FILES):
            (mnt / subdir / f"new{i}").write_bytes(b"created %d" % i)
        if settle:  # a create does not wait for its intent's commit (journal.inflight)
            wait_for("no intent in flight", lambda: durability(mnt)["in_flight"] == 0, 30)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    return sig


def reboot(state: Path) -> None:
    """A power loss of the machine empties /run: the witness and LMDB's lock file go
    with it (the next start cannot tell its page cache survived: it walks)."""
    target = environment.lock_target(state, control.runtime_dir() / "journal-locks")
    for p in (target, watermark.witness_path(target)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
