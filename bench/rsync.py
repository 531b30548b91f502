"""`rsync -a tree/ mnt/` of many small files: native, `--no-scan`, scanning, side by side.

    .venv/bin/python bench/rsync.py [--files 2000] [--dirs 4] [--size 2048] [--rounds 3]
                                    [--json OUT]

rsync is a real program with a real per-file pattern: mkstemp `.name.XXXXXX`
(O_CREAT|O_EXCL), write, close, chmod/utimensat on the temporary name, rename
onto the final name. Each round copies the same tree (random content, `--size`
bytes a file, `--dirs` directories) into a fresh directory of each target:
the source directory natively, a `vfile mount --no-scan` and a `vfile mount`
(scanning, embedded built-in appliance). Prints files/s per round, the medians,
their ratios to native and to `--no-scan`, and the scanning mount's per-file
journal costs from `vfile status --json` once it has settled (fsyncs, batches,
exposure records, write intents, scans, files the drain scanned, metadata changes
and renames that waited for a close scan). Always
unmounts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def make_tree(root: Path, files: int, dirs: int, size: int) -> None:
    for i in range(files):
        d = root / f"d{i % dirs}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(size))


def rsync(tree: Path, dst: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["rsync", "-a", f"{tree}/", f"{dst}/"], check=True)
    return time.perf_counter() - started


def status(mnt: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "vfile", "status", str(mnt), "--json"],
                         check=True, capture_output=True, text=True, cwd=HERE).stdout
    return json.loads(out)


def settle(mnt: Path, deadline_s: float = 120.0) -> dict[str, Any]:
    """The status once nothing is deferred, in flight or pending (or the deadline)."""
    end = time.monotonic() + deadline_s
    while True:
        s = status(mnt)
        busy = (s["journal"]["deferred"] or s["gate"]["pending_intents"]
                or s["gate"]["in_flight"] or s["drain"]["in_flight"])
        if not busy or time.monotonic() > end:
            return s
        time.sleep(0.5)


def costs(s: dict[str, Any]) -> dict[str, int]:
    d = s["journal"]["durability"]
    return {"fsyncs": d["fsyncs"], "batches": d["batches"], "ops": d["ops"],
            "exposure_records": s["journal"]["exposure_records"],
            "write_intents": s["gate"]["write_intents"], "scans": s["gate"]["scans"],
            "close_scans_inline": s["gate"]["close_scans_inline"],
            "drain_done": sum(s["drain"]["done"].values()),
            # metadata changes and renames that waited for a close scan (rs24; absent before)
            "keeping_waits": sum(s["gate"].get("keeping_waits", {}).values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dirs", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="vfile-rsync-"))
    tree = base / "tree"
    make_tree(tree, args.files, args.dirs, args.size)
    targets: dict[str, Path] = {"native": base / "native"}
    targets["native"].mkdir()
    mounted: list[Path] = []
    per_round: dict[str, list[float]] = {"native": [], "noscan": [], "scan": []}
    settled: list[dict[str, int]] = []
    try:
        for name, extra in (("noscan", ["--no-scan"]), ("scan", [])):
            src, mnt = base / name / "src", base / name / "mnt"
            src.mkdir(parents=True)
            mnt.mkdir()
            subprocess.run([sys.executable, "-m", "vfile", "mount", "--state-dir",
                            str(base / name / "state"), "--log-file", str(base / f"{name}.log"),
                            *extra, str(src), str(mnt)], check=True, cwd=HERE)
            mounted.append(mnt)
            targets[name] = mnt
        before = costs(status(targets["scan"]))
        for r in range(args.rounds):
            for name, dst in targets.items():
                (dst / f"r{r}").mkdir()
                per_round[name].append(args.files / rsync(tree, dst / f"r{r}"))
            after = costs(settle(targets["scan"]))
            settled.append({k: after[k] - before[k] for k in after})
            before = costs(status(targets["scan"]))
    finally:
        for mnt in mounted:
            subprocess.run([sys.executable, "-m", "vfile", "unmount", str(mnt)], check=False,
                           cwd=HERE)
        shutil.rmtree(base, ignore_errors=True)
    median = {c: sorted(v)[len(v) // 2] for c, v in per_round.items()}
    print(f"rsync -a of {args.files:,} files of {args.size:,} B in {args.dirs} dirs, "
          f"{args.rounds} rounds (files/s)")
    print(f"{'target':<8} {'rounds':>24}   {'median':>8}  {'/native':>8}  {'/noscan':>8}")
    for c, rates in per_round.items():
        print(f"{c:<8} {' '.join(f'{x:>7,.0f}' for x in rates):>24}   {median[c]:>8,.0f}  "
              f"{median[c] / median['native']:>8.3f}  {median[c] / median['noscan']:>8.3f}")
    print("scanning mount, per round once settled (per file):")
    for r, cost in enumerate(settled):
        print(f"  r{r}: " + ", ".join(f"{k} {v} ({v / args.files:.2f})" for k, v in cost.items()))
    if args.json:
        args.json.write_text(json.dumps({"files": args.files, "size": args.size,
                                         "dirs": args.dirs, "rates": per_round,
                                         "median": median, "settled": settled}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
