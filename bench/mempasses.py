"""The mount server's memory over repeated passes of a real program (m27).

    .venv/bin/python bench/mempasses.py [--modes scan,noscan] [--passes 3]
        [--files 100000] [--pattern tar|opens|churn] [--opens 1000000]
        [--distinct 10000] [--names 500000] [--trace 0] [--work /tmp/m27b] [--json OUT]

One mount per mode, kept for every pass, so what a pass leaves behind shows up
in the next pass's figures (r26 measured one pass per mount: the scanning
server ended 72-89 MiB above `--no-scan` after 100,000 files; is that a bound
or per-pass growth?). Patterns:

- tar:   `tar xf` of `--files` small files (bench/realsize.py's seed), the
         mount settled and the drain emptied, then `rm -rf` of the tree;
- opens: `--opens` open+read+close over `--distinct` files made once (cached
         verdicts cycling through the gate's cache);
- churn: `--names` create+write+close+unlink of distinct names, per pass.

After each pass (and once before the first): VmRSS, RssAnon, the gc object
count, the gate's `cached_verdicts`, the journal's verdicts and pages in use, the
server's descriptors and, with
`--trace N` (`VFILE_TRACEMALLOC=N` in the server), tracemalloc's traced total
and the growth by site since the previous pass. Memory, not time, is what is
measured: the figures do not depend on the machine's load.
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
sys.path.insert(0, str(HERE / "tests"))
sys.path.insert(0, str(HERE))
from mounting import mounted  # type: ignore[import-not-found]  # noqa: E402
from outage import deferred_paths  # type: ignore[import-not-found]  # noqa: E402
from queuedrace import wait_settled  # type: ignore[import-not-found]  # noqa: E402

from bench.realsize import make_seed  # noqa: E402
from vfile import control  # noqa: E402
from vfile.observe.memwatch import rss  # noqa: E402

#: how long the drain gets to empty the journal after a pass (s)
DRAIN_WAIT = 120.0


def sample(mnt: Path, pid: int, top: int) -> dict[str, Any]:
    try:
        control.call(mnt, "status", timeout=30)
    except control.ControlError:  # --no-scan serves no control socket: /proc only
        kib = rss(pid)
        return {"rss_mib": round(kib["VmRSS"] / 1024, 1),
                "anon_mib": round(kib["RssAnon"] / 1024, 1),
                "file_mib": round(kib["RssFile"] / 1024, 1),
                "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    mem = control.call(mnt, "memory", {"top": top, "baseline": top > 0, "types": True},
                       timeout=120)
    status = control.call(mnt, "status", timeout=30)
    gate, journal = status["gate"], status["journal"]
    out = {"rss_mib": round(mem["rss_kib"]["VmRSS"] / 1024, 1),
           "anon_mib": round(mem["rss_kib"]["RssAnon"] / 1024, 1),
           "file_mib": round(mem["rss_kib"]["RssFile"] / 1024, 1),
           "gc_objects": mem["gc_objects"], "cached_verdicts": gate.get("cached_verdicts"),
           "fds": len(os.listdir(f"/proc/{pid}/fd")), "journal_verdicts": journal["verdicts"],
           "journal_used_mib": round(journal["map_used"] / 2**20, 1),
           "types_growth": mem.get("types_growth", {})}
    if mem.get("tracing"):
        out["traced_mib"] = round(mem["traced_kib"] / 1024, 1)
        out["growth"] = mem.get("growth", [])
        out["top"] = mem.get("top", [])
    return out


def settle(mnt: Path, state: Path, scanning: bool) -> int:
    if not scanning:
        return 0
    wait_settled(mnt)
    end = time.monotonic() + DRAIN_WAIT
    while (left := len(deferred_paths(state))) and time.monotonic() < end:
        time.sleep(1)
    return left


def run_mode(mode: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=a.work))
    src, mnt, state = base / "src", base / "mnt", base / "state"
    src.mkdir()
    mnt.mkdir()
    args = ["--no-scan"] if mode == "noscan" else ["--state-dir", str(state)]
    env = {"VFILE_TRACEMALLOC": str(a.trace)} if a.trace else {}
    rows: list[dict[str, Any]] = []
    if a.pattern == "tar":
        make_seed(a.work, a.files)
    if a.pattern == "opens":  # made behind the mount: the first pass scans them at open
        for i in range(a.distinct):
            d = src / f"o{i % 100:02d}"
            d.mkdir(exist_ok=True)
            (d / f"f{i:06d}").write_bytes(b"%d\n" % i * 8)
    try:
        with mounted(src, mnt, *args, env=env) as server:
            pid = server.proc.pid
            top = 25 if a.trace else 0
            rows.append({"mode": mode, "pass": 0, **sample(mnt, pid, top)})
            print("  ", json.dumps({k: v for k, v in rows[-1].items()
                                    if k not in ("growth", "top")}), flush=True)
            for n in range(1, a.passes + 1):
                t = time.monotonic()
                if a.pattern == "tar":
                    (mnt / "x").mkdir()
                    subprocess.run(["tar", "xf", str(a.work / f"seed{a.files}.tar"), "-C",
                                    str(mnt / "x")], check=True)
                    left = settle(mnt, state, mode == "scan")
                    subprocess.run(["rm", "-rf", str(mnt / "x")], check=True)
                elif a.pattern == "opens":
                    names = [mnt / f"o{i % 100:02d}" / f"f{i:06d}" for i in range(a.distinct)]
                    for k in range(a.opens):
                        with open(names[k % a.distinct], "rb") as f:
                            f.read()
                    left = settle(mnt, state, mode == "scan")
                else:
                    d = mnt / f"c{n}"
                    d.mkdir()
                    for k in range(a.names):
                        p = d / f"n{k:07d}"
                        p.write_bytes(b"churn %d\n" % k)
                        p.unlink()
                    left = settle(mnt, state, mode == "scan")
                    d.rmdir()
                secs = round(time.monotonic() - t, 1)
                time.sleep(2)  # FORGETs of the removed tree reach the server
                rows.append({"mode": mode, "pass": n, "s": secs, "journal_left": left,
                             **sample(mnt, pid, top)})
                print("  ", json.dumps({k: v for k, v in rows[-1].items()
                                        if k not in ("growth", "top")}), flush=True)
                for g in rows[-1].get("growth", [])[:12]:
                    print(f"      {g['kib']:+10.1f} KiB {g['blocks']:+8d}  {g['where']}",
                          flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--modes", default="scan,noscan")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--pattern", choices=("tar", "opens", "churn"), default="tar")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--opens", type=int, default=1_000_000)
    ap.add_argument("--distinct", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=500_000)
    ap.add_argument("--trace", type=int, default=0, help="VFILE_TRACEMALLOC frames")
    ap.add_argument("--work", type=Path, default=Path("/tmp/m27b"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    os.chmod(a.work, 0o755)
    report = []
    for mode in a.modes.split(","):
        print(f"== {a.pattern} / {mode}", flush=True)
        report += run_mode(mode, a)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
