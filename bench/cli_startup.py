"""CLI start-up: wall time and CPU time (user+sys) of short `vfile` commands.

Freeze hooks run `vfile quiesce` and `vfile resume` with the guest agent's
timeout running (issue 12), so what a command costs before it does anything
matters. Each command is run N times, side by side (round robin), next to
`python -c pass` (the interpreter's own floor). CPU time (from wait4) is the
robust figure on a loaded machine; wall time is what a hook waits. Without
`--mount`, `status` and `quiesce` target a path no mount serves: they start,
find no socket and exit 5, which is all of their start-up cost.

    .venv/bin/python bench/cli_startup.py [--runs N] [--mount MNT] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def _once(argv: list[str]) -> tuple[float, float]:
    """(wall, user+sys) seconds of one run of argv."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = 0  # reaped by wait4: keep Popen from waiting on it again
    return wall, usage.ru_utime + usage.ru_stime


def _stats(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"min_ms": s[0] * 1e3, "p50_ms": statistics.median(s) * 1e3,
            "p90_ms": s[min(len(s) - 1, int(0.9 * len(s)))] * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mount", help="a live vfile mount for `status` (default: none)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    target = args.mount or os.path.join(tempfile.gettempdir(), "vfile-bench-not-a-mount")
    vfile = str(BIN / "vfile")
    commands: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "vfile version": [vfile, "version"],
        "vfile status": [vfile, "status", target],
    }
    if args.mount is None:  # never freeze a real mount from a benchmark
        commands["vfile quiesce"] = [vfile, "quiesce", target]
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            wall, cpu = _once(argv)
            walls[name].append(wall)
            cpus[name].append(cpu)
    summary: dict[str, Any] = {"runs": args.runs, "mount": args.mount, "commands": {
        name: {"wall": _stats(walls[name]), "cpu": _stats(cpus[name])} for name in commands}}
    print(f"{'command':<18} {'cpu p50':>9} {'cpu min':>9} {'wall p50':>9} {'wall min':>9} "
          f"{'wall p90':>9}   (ms, {args.runs} runs each)")
    for name, fig in summary["commands"].items():
        print(f"{name:<18} {fig['cpu']['p50_ms']:9.0f} {fig['cpu']['min_ms']:9.0f} "
              f"{fig['wall']['p50_ms']:9.0f} {fig['wall']['min_ms']:9.0f} "
              f"{fig['wall']['p90_ms']:9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
