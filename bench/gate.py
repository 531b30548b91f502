"""The gate's cost on open: plain passthrough vs warm verdicts vs cold scans, in one run.

    .venv/bin/python bench/gate.py [--quick] [--json PATH]

Mounts one source directory several times at once, all with the real
`vfile mount --foreground` in subprocesses: a plain passthrough (`--no-scan`),
and a scanning mount per appliance — the built-in appliance (`vfile appliance
serve`, its own process) and a real clamd over a unix socket (FILDES), each
with a fresh state directory. Then it opens and closes files through them:

- plain / warm: rounds over the same small files, the mounts interleaved
  round by round so drift on a shared machine hits both alike; "warm" files
  got their clean verdict in a pass before the timing, and the bench checks
  that the timed rounds scanned nothing (`warm_scans` = 0).
- cold: one pass over files never opened through that mount, so every open
  is scanned (`cold_scans` = the number of opens).

Prints a table and JSON (`--json PATH` also writes it): open+close per
second and the p50 / p99 latency of `open()` itself, and `ratios`:
`warm_vs_plain` (the lowest over the appliances; per appliance too) and
`cold_vs_plain`. DESIGN.md's budget: warm >= 0.9 x plain. Always unmounts and
stops what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import mounted, vfile_cmd  # type: ignore[import-not-found]
from servers import make_samples, running_clamd  # type: ignore[import-not-found]

from vfile import control

FILE_SIZE = 4096
FULL = {"files": 200, "rounds": 20, "cold": 400}
QUICK = {"files": 100, "rounds": 6, "cold": 100}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def open_close(paths: list[Path], lat: list[float]) -> float:
    """Open and close each path once; append each open's latency; return elapsed s."""
    t0 = time.perf_counter()
    for p in paths:
        a = time.perf_counter()
        fd = os.open(p, os.O_RDONLY)
        lat.append(time.perf_counter() - a)
        os.close(fd)
    return time.perf_counter() - t0


def summary(n: int, elapsed: float, lat: list[float]) -> dict[str, float]:
    return {"opens_per_s": round(n / elapsed, 1), "p50_us": round(pct(lat, 0.5) * 1e6, 1),
            "p99_us": round(pct(lat, 0.99) * 1e6, 1), "opens": n}


def gate_scans(mnt: Path) -> int:
    return int(control.call(mnt, "status", timeout=10)["gate"]["scans"])


@contextlib.contextmanager
def builtin_appliance(tmp: Path) -> Iterator[str]:
    """`vfile appliance serve` on a unix socket, in its own process; yields its URL."""
    sock = tmp / "builtin.sock"
    proc = subprocess.Popen(vfile_cmd("appliance", "serve", "--listen", f"unix://{sock}"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while True:
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(sock))
                    break
                except OSError:
                    pass
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("the built-in appliance did not start")
            time.sleep(0.05)
        yield f"clamd://{sock}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(params: dict[str, int], tmp: Path) -> dict[str, Any]:
    src = tmp / "src"
    src.mkdir()
    blob = os.urandom(FILE_SIZE)  # random bytes: no signature matches them
    appliances = ("builtin", "clamd")
    warm_names = [f"w{i:05d}" for i in range(params["files"])]
    cold_names = {a: [f"cold-{a}-{i:05d}" for i in range(params["cold"])] for a in appliances}
    for name in [*warm_names, *(n for names in cold_names.values() for n in names)]:
        (src / name).write_bytes(name.encode() + blob)

    samples = make_samples(tmp / "samples")
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        # clamd: sockets under a short dir (unix socket paths are limited to 107 bytes)
        clamd = stack.enter_context(running_clamd(tmp / "clamd", samples.sigdir))
        urls = {"builtin": stack.enter_context(builtin_appliance(tmp)),
                "clamd": clamd.unix_url}
        mnts: dict[str, Path] = {}
        for name in ("plain", *appliances):
            mnt = tmp / f"mnt-{name}"
            mnt.mkdir()
            args = ["--no-scan"] if name == "plain" else [
                "--appliance", urls[name], "--state-dir", str(tmp / f"state-{name}")]
            stack.enter_context(mounted(src, mnt, *args))
            mnts[name] = mnt

        # warm-up: every warm file opened once through every mount (verdicts for the
        # scanning ones), and the kernel's dentries in place
        for mnt in mnts.values():
            open_close([mnt / n for n in warm_names], [])
        before = {a: gate_scans(mnts[a]) for a in appliances}

        lat: dict[str, list[float]] = {name: [] for name in mnts}
        elapsed = dict.fromkeys(mnts, 0.0)
        for _ in range(params["rounds"]):
            for name, mnt in mnts.items():  # interleaved: plain, builtin, clamd, plain, …
                elapsed[name] += open_close([mnt / n for n in warm_names], lat[name])
        n = params["files"] * params["rounds"]
        results["plain"] = summary(n, elapsed["plain"], lat["plain"])
        for a in appliances:
            warm = summary(n, elapsed[a], lat[a])
            warm["warm_scans"] = gate_scans(mnts[a]) - before[a]
            cold_lat: list[float] = []
            before_cold = gate_scans(mnts[a])
            took = open_close([mnts[a] / c for c in cold_names[a]], cold_lat)
            cold = summary(len(cold_names[a]), took, cold_lat)
            cold["cold_scans"] = gate_scans(mnts[a]) - before_cold
            results[a] = {"warm": warm, "cold": cold}

    plain = results["plain"]["opens_per_s"]
    ratios: dict[str, float] = {}
    for a in appliances:
        ratios[f"warm_vs_plain_{a}"] = round(results[a]["warm"]["opens_per_s"] / plain, 3)
        ratios[f"cold_vs_plain_{a}"] = round(results[a]["cold"]["opens_per_s"] / plain, 3)
    ratios["warm_vs_plain"] = min(ratios[f"warm_vs_plain_{a}"] for a in appliances)
    return {"params": {**params, "file_size": FILE_SIZE}, "results": results, "ratios": ratios}


def table(report: dict[str, Any]) -> str:
    r = report["results"]
    rows = [("plain (--no-scan)", r["plain"], "")]
    for a in ("builtin", "clamd"):
        rows.append((f"{a} warm", r[a]["warm"], f"scans {r[a]['warm']['warm_scans']}"))
        rows.append((f"{a} cold", r[a]["cold"], f"scans {r[a]['cold']['cold_scans']}"))
    plain = r["plain"]["opens_per_s"]
    lines = [f"{'open+close':<20}{'ops/s':>10}{'vs plain':>10}{'p50 µs':>10}{'p99 µs':>10}  "]
    for label, m, extra in rows:
        lines.append(f"{label:<20}{m['opens_per_s']:>10.0f}{m['opens_per_s'] / plain:>10.2f}"
                     f"{m['p50_us']:>10.0f}{m['p99_us']:>10.0f}  {extra}")
    lines.append(f"ratios.warm_vs_plain = {report['ratios']['warm_vs_plain']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer files and rounds")
    ap.add_argument("--json", type=Path, help="also write the JSON report here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="vfb-gate-"))
    try:
        report = run(QUICK if args.quick else FULL, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
