"""The recovery walk's cost (vfile.filter.recovery): 100k and 1M files, one run.

    .venv/bin/python bench/recovery.py [--sizes 100000,1000000] [--journal-all 100000]
                                       [--keep DIR] [--json PATH]

After an unclean stop that lost the state disk's page cache, a mount walks the
source's metadata before it serves and journals every file whose ctime is
above the durable watermark (README "Durability of journal records"). For each
size this generates a tree of empty files (100 per directory, 100 directories
per level) and times, on a fresh journal:

- walk: the walk with the watermark just before the walk (nothing journaled:
  the usual case, where only the last seconds' files are new), cold (the
  dentry and inode caches dropped first, `echo 2 > drop_caches`, root only)
  and warm;
- journal_all (only up to `--journal-all` files): the walk with no watermark,
  every file journaled (tier 1, group commits of 512): the worst case, a
  journal that never had a watermark.

Prints a table and JSON with seconds and files/s per size, and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vfile.config.model import Config
from vfile.filter.recovery import journal_changed_since
from vfile.journal import Journal

PER_DIR = 100


def generate(root: Path, n: int) -> None:
    """n empty files, PER_DIR per leaf directory, PER_DIR leaves per parent."""
    made = 0
    d = 0
    while made < n:
        leaf = root / f"p{d // PER_DIR}" / f"d{d % PER_DIR}"
        leaf.mkdir(parents=True, exist_ok=True)
        for i in range(min(PER_DIR, n - made)):
            os.close(os.open(leaf / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
        made += PER_DIR
        d += 1


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("2\n")
        return True
    except OSError:
        return False


async def timed_walk(root: Path, state: Path, since: int | None) -> dict[str, Any]:
    shutil.rmtree(state, ignore_errors=True)
    journal = Journal.open(state)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        started = time.perf_counter()
        stats = await journal_changed_since(journal, Config(), fd, since)
        took = time.perf_counter() - started
    finally:
        os.close(fd)
        journal.close()
    return {"seconds": round(took, 3), "files": stats.files, "journaled": stats.journaled,
            "files_per_s": round(stats.files / took)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--journal-all", type=int, default=100000,
                    help="journal every file only up to this many files")
    ap.add_argument("--keep", type=Path, help="generate (and keep) the trees here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="vfile-recovery-"))
    out: dict[str, Any] = {"load": [os.getloadavg()[0]], "sizes": {}}
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            root = base / f"tree-{n}"
            if not (root / ".complete").exists():
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                generate(root, n)
                (root / ".complete").write_text("")
            row: dict[str, Any] = {}
            since = time.time_ns()
            row["walk_cold_caches_dropped"] = drop_caches()
            row["walk_cold"] = trio.run(timed_walk, root, base / "state", since)
            row["walk_warm"] = trio.run(timed_walk, root, base / "state", since)
            if n <= args.journal_all:
                row["journal_all"] = trio.run(timed_walk, root, base / "state", None)
            out["sizes"][n] = row
            out["load"].append(os.getloadavg()[0])
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(base / "state")
    print(f"{'files':>10} {'walk cold s':>12} {'walk warm s':>12} {'files/s warm':>13} "
          f"{'journal all s':>14}")
    for n, row in out["sizes"].items():
        ja = row.get("journal_all")
        print(f"{n:>10,} {row['walk_cold']['seconds']:>12.2f} {row['walk_warm']['seconds']:>12.2f}"
              f" {row['walk_warm']['files_per_s']:>13,} "
              f"{'-' if ja is None else format(ja['seconds'], '.2f'):>14}")
    print(f"load average {out['load']}")
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
