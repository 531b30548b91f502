"""Where the microseconds of one request go, measured with a sampling profiler.

    .venv/bin/python bench/reqcost.py [--seconds S] [--rounds R] [--requests]
                                      [--workload open_close|write_4k|create|seq_write]
                                      [--contender c|floor|noscan|scan|scan_noxattr|
                                                   floor_noxattr|floor_ignore_trunc ...]

Mounts every contender at once (as bench/datapath.py does) and measures the
rate and the server's CPU per op unprofiled, in R rounds interleaved across the
contenders (sw22: measured one contender after the other, the load's drift
between them showed up as "waiting in epoll_wait", 30-60 µs per op that an
interleaved run does not find). Then, on each contender, runs the workload in a
loop while it records the server with `py-spy record --native --idle`
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

`--requests` (root, `perf`): the FUSE requests of one op, request by request,
from the kernel's own tracepoints (fuse:fuse_request_send / fuse_request_end,
Linux 6.16+): how many of each opcode per op and the mean time from the
caller's send to the server's reply, during one more interleaved round.
Whether vfile asks the kernel for more (or gets more) than the floor does is
answered here, not guessed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import statistics
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


def seq_write(mnt: Path, mib: int) -> tuple[float, list[int]]:
    """`mib` MiB in 1 MiB writes to the close, from no writeback in flight (an op: a MiB)."""
    datapath.settle(mnt.parent / "src")  # the source's filesystem (this bench's layout)
    return iotiming.seq_write(mnt, mib * datapath.MiB), []


WORKLOADS = {"open_close": datapath.open_close, "write_4k": datapath.write_4k,
             "create": datapath.create_write_close, "seq_write": seq_write}


def _limits(workload: str) -> tuple[int, int]:
    """(ops per batch, most ops per phase). C passthrough_ll holds a descriptor per
    file the kernel knows: past ~20,000 creates it fails EMFILE, so creates stop at
    5,000 per phase. A sequential write: 64 MiB per batch, an op per MiB."""
    if workload == "seq_write":
        return 64, 10**9
    return (50, 5000) if workload == "create" else (500, 10**9)


def rate_round(pid: int, mnt: Path, workload: str, seconds: float) -> tuple[int, float, int]:
    """The workload in a loop for `seconds`, unprofiled: (ops, wall s, server CPU ns)."""
    run, (batch, most) = WORKLOADS[workload], _limits(workload)
    ops, cpu0, t0 = 0, cpu_ns(pid), time.perf_counter()
    while time.perf_counter() - t0 < seconds and ops < most:
        run(mnt, batch)
        ops += batch
    return ops, time.perf_counter() - t0, cpu_ns(pid) - cpu0


def spy(pid: int, mnt: Path, workload: str, seconds: float) -> collections.Counter[str]:
    """Samples of the server's main thread by bucket while the workload runs. py-spy
    stops the server for each sample, which slows it down but leaves the shares of
    the samples as they were."""
    run, (batch, most) = WORKLOADS[workload], _limits(workload)
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
    return counts


_TRACE = re.compile(r"fuse:fuse_request_(send|end):\s+connection (\d+) req (\d+)"
                    r"(?: opcode \d+ \((\w+)\))?")


def requests(mounts: dict[str, tuple[int, Path]], workload: str, seconds: float
             ) -> dict[str, dict[str, dict[str, float]]]:
    """Per contender and opcode: requests per op and mean µs from send to reply, from
    the kernel's FUSE tracepoints during one interleaved round."""
    data = Path(tempfile.mkstemp(suffix=".perf")[1])
    perf = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "fuse:fuse_request_send",
                             "-e", "fuse:fuse_request_end", "-o", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # perf has its events enabled
        if perf.poll() is not None:
            raise SystemExit("perf record failed (root, and fuse tracepoints: Linux 6.16+)")
        ops: dict[str, int] = {}
        for c, (pid, mnt) in mounts.items():
            ops[c] = rate_round(pid, mnt, workload, seconds)[0]
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "time,event,trace"],
                          capture_output=True, text=True, check=True).stdout
    data.unlink()
    # The tracepoints' connection is the kernel's dev_t (major << 20 | minor).
    by_dev = {os.stat(mnt).st_dev: c for c, (_pid, mnt) in mounts.items()}
    sent: dict[tuple[int, int], tuple[float, str]] = {}
    per: dict[str, dict[str, list[float]]] = {c: {} for c in mounts}
    for line in text.splitlines():
        if (m := _TRACE.search(line)) is None:
            continue
        kind, conn, req, opcode = m.groups()
        dev = os.makedev(int(conn) >> 20, int(conn) & 0xFFFFF)
        when = float(line.split(":", 1)[0])
        if kind == "send":
            sent[dev, int(req)] = (when, opcode)
        elif (start := sent.pop((dev, int(req)), None)) is not None and dev in by_dev:
            c = by_dev[dev]
            per[c].setdefault(start[1].removeprefix("FUSE_"), []).append(when - start[0])
    return {c: {op: {"per_op": len(lat) / ops[c], "us": statistics.fmean(lat) * 1e6}
                for op, lat in sorted(per[c].items(), key=lambda kv: -len(kv[1]))}
            for c in mounts}


def mount(c: str, src: Path, mnt: Path, state: Path
          ) -> contextlib.AbstractContextManager[int]:
    if c == "c":
        return datapath.mounted_c(datapath.build_passthrough_ll(state.parent), src, mnt)
    if c.startswith("floor"):
        return datapath.mounted_floor(src, mnt, *{"floor_noxattr": ["--noxattr"],
                                                  "floor_ignore_trunc": ["--ignore-trunc"]
                                                  }.get(c, []))
    extra = {"noscan": ["--no-scan"], "scan": [], "scan_noxattr": ["-o", "noxattr"]}[c]
    return datapath.mounted_vfile(src, mnt, state, *extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=8,
                    help="unprofiled seconds per contender (split in rounds), and profiled")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved unprofiled rounds")
    ap.add_argument("--requests", action="store_true",
                    help="the FUSE requests of one op, from the kernel's tracepoints (perf)")
    ap.add_argument("--workload", default="open_close", choices=tuple(WORKLOADS))
    ap.add_argument("--contender", action="append",
                    choices=("c", "floor", "noscan", "scan", "scan_noxattr", "floor_noxattr",
                             "floor_ignore_trunc"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not PYSPY.exists():
        raise SystemExit(f"{PYSPY} is missing: .venv/bin/pip install py-spy")
    contenders = args.contender or ["c", "floor", "noscan", "scan"]
    base = Path(tempfile.mkdtemp(prefix="vfile-reqcost-"))
    results: dict[str, dict[str, object]] = {}
    reqs: dict[str, dict[str, dict[str, float]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            mounts: dict[str, tuple[int, Path]] = {}
            for c in contenders:
                src, mnt = base / c / "src", base / c / "mnt"
                src.mkdir(parents=True)
                mnt.mkdir()
                mounts[c] = (stack.enter_context(mount(c, src, mnt, base / f"state-{c}")), mnt)
                datapath.prepare(mnt, 4096)
                datapath.warm_up(mnt)
            rounds: dict[str, list[tuple[int, float, int]]] = {c: [] for c in contenders}
            for _ in range(args.rounds):
                for c, (pid, mnt) in mounts.items():
                    rounds[c].append(rate_round(pid, mnt, args.workload,
                                                args.seconds / args.rounds))
            if args.requests:
                reqs = requests(mounts, args.workload, 2.0)
            for c, (pid, mnt) in mounts.items():
                ops = sum(r[0] for r in rounds[c])
                per_op = sum(r[1] for r in rounds[c]) / ops * 1e6
                cpu = statistics.median(r[2] / 1000 / r[0] for r in rounds[c])
                counts = spy(pid, mnt, args.workload, args.seconds) if c != "c" else None
                total = (sum(counts.values()) or 1) if counts else 1
                results[c] = {"ops_per_s": 1e6 / per_op, "us_per_op": per_op,
                              "server_cpu_us": cpu, "samples": sum((counts or {}).values()),
                              "buckets_us": ({b: counts[b] / total * per_op for b in BUCKETS}
                                             if counts else {})}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    print(f"{args.workload}: µs of one op, by where the server's main thread was "
          f"(py-spy --native --idle); {args.rounds} interleaved rounds; load average "
          f"{' '.join(f'{x:.2f}' for x in load)}")
    print(f"{'':<10}{'ops/s':>9}{'µs/op':>8}{'srv CPU':>9}"
          + "".join(f"{b:>9}" for b in BUCKETS))
    for c, r in results.items():
        b = r["buckets_us"]
        assert isinstance(b, dict)
        print(f"{c:<10}{r['ops_per_s']:>9,.0f}{r['us_per_op']:>8.1f}{r['server_cpu_us']:>9.1f}"
              + "".join(f"{b[k]:>9.1f}" if b else f"{'-':>9}" for k in BUCKETS))
    if reqs:
        print("FUSE requests per op (kernel tracepoints): opcode count/op, mean µs send->reply")
        for c, by_op in reqs.items():
            print(f"  {c:<10}" + "  ".join(f"{op} {v['per_op']:.2f} {v['us']:.1f}"
                                           for op, v in by_op.items() if v["per_op"] >= 0.005))
    report = {"workload": args.workload, "load": load, "rounds": args.rounds,
              "results": results, "requests": reqs}
    return iotiming.emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
