"""One reader during a window vs outside it: the cost of an unscanned read's record.

    .venv/bin/python bench/window.py [--files N] [--json PATH]

A real `vfile mount` on the built-in appliance (its own process), default
safe profile. Two sets of N small files (default 5,000 of 1-4 KiB), never
opened before. One reader (this process, one thread) opens and reads:

- set A outside a window: every open is scanned (a verdict is stored);
- set B during a window (`vfile quiesce`): no scan, every open journals a
  tier-2 record (committed, not fsynced: README "Durability of journal records").

Reported side by side: opens/s and p50 / p99 of each open+read, the ratio
`window_vs_outside` (issue 20's aim: >= 0.8), and the journal's fsync count
during each phase (the window phase should add none but the background
sync's, one per `journal.sync_interval`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import mounted, stop_process, vfile_cmd  # type: ignore[import-not-found]
from servers import wait_ready  # type: ignore[import-not-found]

from vfile import control


def make_set(root: Path, name: str, n: int, rng: random.Random) -> list[Path]:
    out = []
    for i in range(n):
        d = root / name / f"d{i // 1000:03d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"f{i:06d}.bin"
        p.write_bytes(rng.randbytes(rng.randint(1024, 4096)))
        out.append(p)
    return out


def read_all(paths: list[Path]) -> dict[str, float]:
    lat = []
    t0 = time.perf_counter()
    for p in paths:
        t = time.perf_counter()
        with open(p, "rb") as f:
            f.read()
        lat.append(time.perf_counter() - t)
    took = time.perf_counter() - t0
    lat.sort()
    return {"seconds": round(took, 3), "opens_per_s": round(len(paths) / took, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=5000, help="files per set")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vfile-bench-window-"))
    app = None
    try:
        src, mnt = tmp / "src", tmp / "mnt"
        src.mkdir()
        mnt.mkdir()
        rng = random.Random(7)
        set_a = make_set(src, "a", args.files, rng)
        set_b = make_set(src, "b", args.files, rng)
        sock = tmp / "appliance.sock"
        app = subprocess.Popen(vfile_cmd("appliance", "serve", "--listen", f"unix://{sock}"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(app, [(str(sock), b"zPING\0", b"PONG")], [], "built-in appliance")
        conf = tmp / "vfile.toml"
        conf.write_text(f'[mount]\nappliances = ["clamd://{sock}"]\n'
                        f'state_dir = "{tmp / "state"}"\n')
        with mounted(src, mnt, "--config", str(conf)):
            def ctl(cmd: str) -> Any:
                return control.call(mnt, cmd, None, timeout=60)

            fs0 = ctl("status")["journal"]["durability"]["fsyncs"]
            outside = read_all([mnt / p.relative_to(src) for p in set_a])
            st = ctl("status")
            fs1 = st["journal"]["durability"]["fsyncs"]
            scans = st["gate"]["scans"]
            ctl("quiesce")
            fs2 = ctl("status")["journal"]["durability"]["fsyncs"]
            window = read_all([mnt / p.relative_to(src) for p in set_b])
            st = ctl("status")
            fs3 = st["journal"]["durability"]["fsyncs"]
            if st["journal"]["deferred"] != args.files or st["gate"]["scans"] != scans:
                raise RuntimeError(f"expected {args.files} deferred and no scan in the "
                                   f"window: {st['journal']['deferred']} deferred")
            ctl("resume")
    finally:
        if app is not None:
            stop_process(app)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"files_per_set": args.files,
              "outside_window": {**outside, "fsyncs": fs1 - fs0},
              "window": {**window, "fsyncs": fs3 - fs2},
              "window_vs_outside": round(window["opens_per_s"] / outside["opens_per_s"], 3)}
    print(f"{'one reader, new files':<28}{'opens/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'fsyncs':>8}")
    for name, r in (("outside a window (scanned)", result["outside_window"]),
                    ("during a window (journaled)", result["window"])):
        assert isinstance(r, dict)
        print(f"{name:<28}{r['opens_per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['fsyncs']:>8}")
    print(f"window_vs_outside {result['window_vs_outside']}")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
