"""Where the microseconds of one request go, measured with a sampling profiler.

    .venv/bin/python bench/reqcost.py [--seconds S] [--workload open_close|write_4k|create]
                                      [--contender c|floor|noscan|scan|scan_noxattr ...]

Mounts each contender (as bench/datapath.py does), runs one workload in a loop
on it, and meanwhile records the server with `py-spy record --native --idle`
(install py-spy in the venv: `.venv/bin/pip install py-spy`). Every sample of the
server's main thread (the one that serves FUSE requests) is put in one bucket,
judged from the innermost frame outwards:

- reply: `writev` of the reply to /dev/fuse. The kernel completes the request
  inside it and wakes the caller, and on a busy 2-core machine the server is
  often preempted right there until the caller has run: it is mostly the
  kernel round trip as the server sees it;
- wait: `epoll_wait` with nothing to do (the caller, the kernel's side of the
  request, other processes);
- read: `read` of the next request from /dev/fuse;
- trio: trio's scheduler and I/O manager (wait_readable, epoll_ctl, reschedule);
- pyfuse3: pyfuse3's Cython dispatch, libfuse's request parsing and the
  handler's argument and reply objects;
- handler: the Operations method itself, and its syscalls (vfile's or the floor's);
- gate: vfile's hooks and the gate (vfile/filter, vfile/hooks, journal, scanner).

Per op = share of the main thread's samples x wall time / ops (measured first,
without the profiler, which stops the server for each sample), so the buckets add
up to the wall-clock time of one op. Also prints the server's CPU time per op
(all its threads, /proc/PID/task/*/schedstat). Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import datapath, iotiming
from bench.iotiming import cpu_ns

BUCKETS = ("reply", "wait", "read", "trio", "pyfuse3", "handler", "gate", "other")
PYSPY = Path(sys.executable).with_name("py-spy")


def bucket(frames: list[str]) -> str:
    """The bucket of one stack (outermost frame first)."""
    for frame in reversed(frames):
        if frame.startswith("writev "):
            return "reply"
        if frame.startswith("epoll_wait "):
            return "wait"
        if frame.startswith("read (libc") and any("fuse_session_receive_buf" in f or
                                                  "__init__.pyx" in f for f in frames):
            return "read"
        where = frame[frame.find("(") + 1:]
        if where.startswith(("vfile/filter/", "vfile/hooks", "journal/", "scanner/",
                             "vfile/observe/", "vfile/journal/", "vfile/scanner/")):
            return "gate"
        if where.startswith(("vfile/passthrough/", "bench/floorfs.py")):
            return "handler"
        if where.startswith(("trio/", "outcome/")):
            return "trio"
        if where.startswith(("__init__.pyx", "handlers.pxi", "_pyfuse3.py", "internal.pxi",
                             "libfuse3")) or "(libfuse3" in frame:
            return "pyfuse3"
    return "other"


def main_thread(frames: list[str]) -> bool:
    return any(f.startswith(("unrolled_run ", "run (trio")) for f in frames)


def profile(pid: int, mnt: Path, workload: str, seconds: int, *, spy: bool = True
            ) -> dict[str, object]:
    run = {"open_close": datapath.open_close, "write_4k": datapath.write_4k,
           "create": datapath.create_write_close}[workload]
    batch = 50 if workload == "create" else 500
    # C passthrough_ll holds a descriptor per file the kernel knows: past ~20,000
    # creates it fails EMFILE. Creates stop at 5,000 per phase.
    most = 5000 if workload == "create" else 10**9
    # The rate and CPU time unprofiled: py-spy stops the server for each sample, which
    # slows it down but leaves the shares of the samples as they were.
    ops, cpu0, t0 = 0, cpu_ns(pid), time.perf_counter()
    while time.perf_counter() - t0 < seconds and ops < most:
        run(mnt, batch)
        ops += batch
    wall = time.perf_counter() - t0
    cpu = (cpu_ns(pid) - cpu0) / 1000 / ops
    per_op = wall / ops * 1e6
    if not spy:  # C passthrough_ll: no Python to sample
        return {"ops_per_s": ops / wall, "us_per_op": per_op, "server_cpu_us": cpu,
                "samples": 0, "buckets_us": {}}
    out = Path(tempfile.mkstemp(suffix=".raw")[1])
    sampler = subprocess.Popen([str(PYSPY), "record", "-p", str(pid), "-d", str(int(seconds)),
                               "-r", "250", "--native", "--idle", "-f", "raw", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    while sampler.poll() is None and done < most:
        run(mnt, batch)
        done += batch
    sampler.send_signal(signal.SIGINT)  # enough: py-spy writes what it has
    sampler.wait()
    counts: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if main_thread(frames):
            counts[bucket(frames)] += int(n)
    out.unlink()
    total = sum(counts.values()) or 1
    return {"ops_per_s": ops / wall, "us_per_op": per_op, "server_cpu_us": cpu,
            "samples": total,
            "buckets_us": {b: counts[b] / total * per_op for b in BUCKETS}}


def mount(c: str, src: Path, mnt: Path, state: Path
          ) -> contextlib.AbstractContextManager[int]:
    if c == "c":
        return datapath.mounted_c(datapath.build_passthrough_ll(state.parent), src, mnt)
    if c.startswith("floor"):
        return datapath.mounted_floor(src, mnt, *(["--noxattr"] if c == "floor_noxattr" else []))
    extra = {"noscan": ["--no-scan"], "scan": [], "scan_noxattr": ["-o", "noxattr"]}[c]
    return datapath.mounted_vfile(src, mnt, state, *extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--workload", default="open_close",
                    choices=("open_close", "write_4k", "create"))
    ap.add_argument("--contender", action="append",
                    choices=("c", "floor", "noscan", "scan", "scan_noxattr", "floor_noxattr"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not PYSPY.exists():
        raise SystemExit(f"{PYSPY} is missing: .venv/bin/pip install py-spy")
    contenders = args.contender or ["c", "floor", "noscan", "scan"]
    base = Path(tempfile.mkdtemp(prefix="vfile-reqcost-"))
    results: dict[str, dict[str, object]] = {}
    try:
        for c in contenders:
            src, mnt = base / c / "src", base / c / "mnt"
            src.mkdir(parents=True)
            mnt.mkdir()
            ctx = mount(c, src, mnt, base / f"state-{c}")
            with ctx as pid:
                datapath.prepare(mnt, 4096)
                datapath.warm_up(mnt)
                results[c] = profile(pid, mnt, args.workload, args.seconds, spy=c != "c")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    print(f"{args.workload}: µs of one op, by where the server's main thread was "
          f"(py-spy --native --idle); load average {' '.join(f'{x:.2f}' for x in load)}")
    print(f"{'':<10}{'ops/s':>9}{'µs/op':>8}{'srv CPU':>9}"
          + "".join(f"{b:>9}" for b in BUCKETS))
    for c, r in results.items():
        b = r["buckets_us"]
        assert isinstance(b, dict)
        print(f"{c:<10}{r['ops_per_s']:>9,.0f}{r['us_per_op']:>8.1f}{r['server_cpu_us']:>9.1f}"
              + "".join(f"{b[k]:>9.1f}" if b else f"{'-':>9}" for k in BUCKETS))
    report = {"workload": args.workload, "load": load, "results": results}
    return iotiming.emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
