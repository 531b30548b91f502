"""Create + write 4 KiB + close by one writer, side by side: where a create's cost goes.

    .venv/bin/python bench/creates.py [--files 1000] [--rounds 5] [--baseline CHECKOUT]
                                      [--distinct]

Mounts, at once, `vfile mount --no-scan`, `vfile mount` (scanning, embedded
built-in appliance) and `vfile mount` with a profile that does not scan after
writes (`triggers = ["open"]`: no write intent, no close scan), and with
`--baseline` the scanning mount of another checkout (its own `vfile`, run from
that directory: e.g. the main branch, to compare before and after). Then
creates `--files` files in each, round after round interleaved, and prints
each contender's creates/s per round, the medians, their ratios to
`--no-scan`, and the load average per round. Always unmounts.

Also prints, per contender, the server's CPU time per create (median of the
rounds, µs): its main thread (the trio thread, which serves FUSE and runs the
close scans: one writer's rate is bound by it) and all its threads, from
/proc/PID/task/*/schedstat; a loaded machine blurs rates more than these.

Every file gets the same 4 KiB (as bench/datapath.py's create row), so from the
second file on a close scan takes the verdict of that content by its hash
(vfile.filter.contenthash); `--distinct` gives each file its own random 4 KiB,
so every close scan asks the appliance.
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

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
from bench.iotiming import cpu_ns, server_pid  # noqa: E402


def trio_cpu_ns(pid: int) -> int:
    """CPU time (ns) the server's main thread (the trio thread) has run so far."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0])


def create_files(d: Path, n: int, distinct: bool = False) -> float:
    d.mkdir()
    same = os.urandom(4096)
    bufs = [os.urandom(4096) if distinct else same for _ in range(n)]
    started = time.perf_counter()
    for i in range(n):
        fd = os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, bufs[i])
        os.close(fd)
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="another checkout: its scanning mount too")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--distinct", action="store_true", help="each file its own content")
    ap.add_argument("--env-contender", action="append", default=[], metavar="NAME=VAR=VALUE",
                    help="also this checkout's scanning mount with VAR=VALUE in its environment")
    ap.add_argument("--pin", action="store_true",
                    help="the writer on CPU 0, every server on CPU 1 (sched_setaffinity)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="vfile-creates-"))
    cfg = base / "open-only.toml"
    cfg.write_text('[[profile]]\nname = "default"\ntriggers = ["open"]\n')
    contenders: dict[str, tuple[Path, list[str]]] = {
        "noscan": (HERE, ["--no-scan"]), "scan": (HERE, []),
        "scan_no_close_trigger": (HERE, ["--config", str(cfg)])}
    if args.baseline is not None:
        contenders["baseline_scan"] = (args.baseline.resolve(), [])
    envs: dict[str, dict[str, str]] = {}
    for spec in args.env_contender:
        name, var, value = spec.split("=", 2)
        contenders[name] = (HERE, [])
        envs[name] = {**os.environ, var: value}
    mounted: dict[str, Path] = {}
    rates: dict[str, list[float]] = {c: [] for c in contenders}
    loads: list[float] = []
    cpu: dict[str, list[tuple[float, float]]] = {c: [] for c in contenders}  # (trio, all) µs
    try:
        for name, (checkout, extra) in contenders.items():
            src, mnt = base / name / "src", base / name / "mnt"
            src.mkdir(parents=True)
            mnt.mkdir()
            subprocess.run([sys.executable, "-m", "vfile", "mount", "--state-dir",
                            str(base / name / "state"), "--log-file", str(base / f"{name}.log"),
                            *extra, str(src), str(mnt)], check=True, cwd=checkout,
                           env=envs.get(name))
            mounted[name] = mnt
        pids = {name: server_pid(mnt) for name, mnt in mounted.items()}
        if args.pin:
            os.sched_setaffinity(0, {0})
            for pid in pids.values():
                for tid in os.listdir(f"/proc/{pid}/task"):  # every thread of the server
                    os.sched_setaffinity(int(tid), {1})
        for r in range(args.rounds):
            # Reversed every other round: a contender is as often before as after another
            # (the machine's speed drifts within a round).
            order = list(mounted.items())
            for name, mnt in order if r % 2 == 0 else order[::-1]:
                pid = pids[name]
                t0, a0 = trio_cpu_ns(pid), cpu_ns(pid)
                rates[name].append(create_files(mnt / f"r{r}", args.files, args.distinct))
                time.sleep(0.2)  # the last close scans and commits
                cpu[name].append(((trio_cpu_ns(pid) - t0) / 1e3 / args.files,
                                  (cpu_ns(pid) - a0) / 1e3 / args.files))
            loads.append(os.getloadavg()[0])
    finally:
        for name, mnt in mounted.items():
            subprocess.run([sys.executable, "-m", "vfile", "unmount", str(mnt)], check=False,
                           cwd=contenders[name][0])
        shutil.rmtree(base, ignore_errors=True)
    median = {c: sorted(v)[len(v) // 2] for c, v in rates.items()}
    for c, per_round in rates.items():
        print(f"{c:<22} {' '.join(f'{x:>6,.0f}' for x in per_round)}   median {median[c]:>6,.0f}"
              f"   / noscan {median[c] / median['noscan']:.2f}")
    cpu_median = {c: (sorted(t for t, _ in v)[len(v) // 2], sorted(a for _, a in v)[len(v) // 2])
                  for c, v in cpu.items()}
    print("server CPU per create, µs (median): trio thread / all threads")
    for c, (t, a) in cpu_median.items():
        print(f"{c:<22} {t:>6,.0f} / {a:>6,.0f}   trio thread beyond noscan "
              f"{t - cpu_median['noscan'][0]:>+6,.0f}")
    # Per round, each contender against the --no-scan of the same round (adjacent in
    # time): steadier than the ratio of medians when the machine's speed drifts.
    round_ratios = {c: sorted(v[r] / rates["noscan"][r] for r in range(len(v)))
                 for c, v in rates.items()}
    trio_beyond = {c: sorted(v[r][0] - cpu["noscan"][r][0] for r in range(len(v)))
                   for c, v in cpu.items()}
    print("per-round ratio to noscan: median [min-max]; trio µs beyond noscan: median "
          "[min-max]")
    for c, v in round_ratios.items():
        b = trio_beyond[c]
        print(f"{c:<22} {v[len(v) // 2]:.2f} [{v[0]:.2f}-{v[-1]:.2f}]   "
              f"{b[len(b) // 2]:>+6,.0f} [{b[0]:+,.0f} {b[-1]:+,.0f}]")
    print(f"load average per round: {', '.join(f'{x:.1f}' for x in loads)}")
    report = {"files": args.files, "rounds": args.rounds, "rates": rates, "median": median,
              "cpu_us": cpu, "cpu_us_median": cpu_median,
              "vs_noscan": {c: median[c] / median["noscan"] for c in median},
              "per_round_vs_noscan": round_ratios, "trio_us_beyond_noscan": trio_beyond,
              "load": loads}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
