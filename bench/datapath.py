"""The data path side by side: native, libfuse's C passthrough_ll, the pyfuse3
floor, vfile --no-scan, vfile scanning (warm verdicts), in one run.

    .venv/bin/python bench/datapath.py [--quick] [--rounds N] [--json PATH] [--skip-slow]

Builds libfuse's own example `passthrough_ll` (Debian's libfuse3-dev ships
its source; gcc and `pkg-config fuse3`) and mounts it with
`cache=always,writeback`: the limit of the FUSE stack on this kernel. Mounts
the same kind of source with `vfile mount --no-scan` and with `vfile mount`
(the embedded built-in appliance; a warm-up pass gives every file a verdict,
so the timed opens are cached ones). Then runs each workload on every
contender, interleaved round by round so drift on a shared machine hits all
alike (issue 15's table). The pyfuse3 floor (bench/floorfs.py) is the thinnest
passthrough pyfuse3 can serve with vfile's mount options and main loop: where it is
below C passthrough_ll, pyfuse3 is the limit; what vfile costs above it, vfile
adds. Xattrs on and off run as three more contenders on the write workloads: C
passthrough_ll `-o xattr` (its default answers xattr requests ENOSYS, like vfile's
`-o noxattr`), and the floor and vfile scanning with `-o noxattr` (the documented
small-write configuration). The server's CPU time per op (all its threads) is
printed too: it moves less with the machine's load than the rates. Workloads:

- 4 KiB writes to one open file; create + write 4 KiB + close; open + close
  of one file; open + read 64 KiB + close; stat;
- sequential write (1 MiB writes; three per round from no writeback in flight,
  their median) and warm sequential read, MiB/s;
- 8 readers in parallel, each reading its own cold file (page cache dropped
  with POSIX_FADV_DONTNEED on the file and, under a mount, on its source).

Each workload starts with the server idle (a scanning mount's scans of the files
just written finished). Then cached opens of one file beside 4 readers stuck in
slow reads of another (the source is bench/slowfs.py, a FUSE filesystem whose reads sleep), against
the same opens on a quiet mount: C passthrough_ll (multithreaded) and vfile
scanning; `p99_stuck_vs_quiet` (issue 15's goal: within 2x).

Also measures `thread_hop_us`: one trio.to_thread round trip, the price of
moving a request off the trio thread (vfile.passthrough.datapath decides with it).

Prints a table (ops/s or MiB/s; per-op p50/p99 µs where an op is timed one
by one) and JSON with every value and `ratios` (each contender / C
passthrough_ll). Always unmounts and stops what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

# Runnable from a checkout: the repository root first, for the shared bench helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import iotiming
from bench.iotiming import cpu_ns, drop_cache, server_pid, timed

KiB, MiB = 1024, 1024 * 1024
EXAMPLE = Path("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c")
CONTENDERS = ("native", "c_passthrough_ll", "pyfuse3_floor", "vfile_noscan", "vfile_scan")
#: xattrs on and off, on the workloads they change: C passthrough_ll answers xattr
#: requests ENOSYS unless `-o xattr` (so its default is vfile's `-o noxattr`), and with
#: xattrs on every write(2) costs a GETXATTR round trip for security.capability
#: (file_remove_privs; no SB_NOSEC without FUSE_HANDLE_KILLPRIV_V2, see README)
NOXATTR = ("c_passthrough_ll_xattr", "pyfuse3_floor_noxattr", "vfile_scan_noxattr")
NOXATTR_METRICS = ("write_4k", "create_write_close")
#: the floor and vfile with C passthrough_ll's cache=always timeouts (86400 s, vfile's
#: default is 1 s; `vfile mount --cache-timeout`): a cached stat never reaches the
#: server; on the workloads the timeouts change
LONG_TIMEOUT = ("pyfuse3_floor_86400s", "vfile_scan_86400s")
LONG_TIMEOUT_METRICS = ("stat", "open_close")
FLOORFS = Path(__file__).with_name("floorfs.py")

# -- building and mounting --------------------------------------------------------


def build_passthrough_ll(out: Path) -> Path:
    if not EXAMPLE.exists():
        raise SystemExit(f"{EXAMPLE} is missing: apt-get install libfuse3-dev")
    flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], check=True,
                           capture_output=True, text=True).stdout.split()
    binary = out / "passthrough_ll"
    subprocess.run(["gcc", "-O2", "-Wall", str(EXAMPLE), *flags, "-o", str(binary)],
                   check=True)
    return binary


def _wait_mounted(mnt: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while str(mnt) not in [line.split()[1] for line in
                           Path("/proc/self/mounts").read_text().splitlines()]:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{mnt}: the filesystem exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{mnt} did not mount")
        time.sleep(0.02)


@contextlib.contextmanager
def _serving(argv: list[str], mnt: Path) -> Iterator[int]:
    """A filesystem process serving `mnt` in the foreground: its pid; unmounted after."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_mounted(mnt, proc)
        yield proc.pid
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False,
                       capture_output=True)
        try:
            proc.wait(15)  # it exits once unmounted
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(15)


def mounted_c(binary: Path, src: Path, mnt: Path, extra: str = ""
              ) -> contextlib.AbstractContextManager[int]:
    return _serving([str(binary), "-f", "-o", f"source={src},cache=always,writeback{extra}",
                     str(mnt)], mnt)


def mounted_floor(src: Path, mnt: Path, *extra: str) -> contextlib.AbstractContextManager[int]:
    """bench/floorfs.py: the thinnest pyfuse3 passthrough, vfile's mount options."""
    return _serving([sys.executable, str(FLOORFS), *extra, str(src), str(mnt)], mnt)


@contextlib.contextmanager
def mounted_vfile(src: Path, mnt: Path, state: Path, *extra: str) -> Iterator[int]:
    subprocess.run([sys.executable, "-m", "vfile", "mount", "--state-dir", str(state),
                    "--log-file", str(state.parent / f"{mnt.name}.log"), *extra, str(src),
                    str(mnt)], check=True)
    try:
        yield server_pid(mnt)
    finally:
        subprocess.run([sys.executable, "-m", "vfile", "unmount", str(mnt)], check=False)

# -- workloads: each returns (rate, per-op latencies in ns or []) -------------------


def write_4k(d: Path, n: int) -> tuple[float, list[int]]:
    buf = os.urandom(4 * KiB)
    fd = os.open(d / "w4k", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return timed(n, lambda _i: os.write(fd, buf))
    finally:
        os.close(fd)


def create_write_close(d: Path, n: int) -> tuple[float, list[int]]:
    sub = d / f"cr{time.monotonic_ns()}"
    sub.mkdir()
    buf = os.urandom(4 * KiB)
    base = str(sub)

    def op(i: int) -> None:
        fd = os.open(f"{base}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, buf)
        os.close(fd)

    return timed(n, op)


def open_close(d: Path, n: int) -> tuple[float, list[int]]:
    p = str(d / "small")
    return timed(n, lambda _i: os.close(os.open(p, os.O_RDONLY)))


def open_read_close(d: Path, n: int) -> tuple[float, list[int]]:
    p = str(d / "r64k")

    def op(_i: int) -> None:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 64 * KiB)
        os.close(fd)

    return timed(n, op)


def stat_op(d: Path, n: int) -> tuple[float, list[int]]:
    names = [str(d / f"st{i}") for i in range(100)]
    return timed(n, lambda i: os.stat(names[i % 100]))


def settle(d: Path) -> None:
    """Untimed, before a timed sequential write: no writeback in flight on the
    source's filesystem. The timed open(O_TRUNC) otherwise waits for the
    writeback of the file's previous 64 MiB (ext4 starts it when a file truncated
    and rewritten is closed, auto_da_alloc), and the contenders' rounds share the
    disk: C passthrough_ll went from 106 to 665 MiB/s between rounds of one run
    (README, data path, sw22). syncfs, not sync(2): another filesystem of the
    machine may be frozen."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs", str(d))
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)


#: sequential writes per round: their median is the round's. A write's server CPU per
#: MiB jumps 2-3x now and then for every contender alike (the floor and C
#: passthrough_ll too), with the same requests of the same sizes (README, sw22).
SEQ_REPEATS = 3


def seq_write(d: Path, src: Path | None, size: int) -> tuple[float, list[int]]:
    rates = []
    for _ in range(SEQ_REPEATS):
        settle(src or d)  # the source's filesystem (a FUSE mount does not pass syncfs on)
        rates.append(iotiming.seq_write(d, size))
    return statistics.median(rates), []


def seq_read_warm(d: Path, size: int) -> tuple[float, list[int]]:
    fd = os.open(d / "seq", os.O_RDONLY)
    try:
        while os.read(fd, MiB):  # warm it
            pass
        t0 = time.perf_counter()
        os.lseek(fd, 0, os.SEEK_SET)
        total = 0
        while chunk := os.read(fd, MiB):
            total += len(chunk)
    finally:
        os.close(fd)
    return total / MiB / (time.perf_counter() - t0), []


def parallel_cold_read(d: Path, src: Path | None, size: int) -> tuple[float, list[int]]:
    names = [f"cold{i}" for i in range(8)]
    drop_cache(*(d / n for n in names), *((src / n for n in names) if src else ()))
    lat: list[int] = []

    def reader(name: str) -> None:
        fd = os.open(d / name, os.O_RDONLY)
        try:
            a = time.perf_counter_ns()
            while os.read(fd, MiB):
                pass
            lat.append(time.perf_counter_ns() - a)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(n,)) for n in names]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 8 * size / MiB / (time.perf_counter() - t0), lat


def prepare(d: Path, cold_size: int) -> None:
    (d / "small").write_bytes(b"x" * 100)
    (d / "r64k").write_bytes(os.urandom(64 * KiB))
    for i in range(100):
        (d / f"st{i}").write_bytes(b"x")
    for i in range(8):
        (d / f"cold{i}").write_bytes(os.urandom(cold_size))


def warm_up(d: Path) -> None:
    """Open every file once (under scanning: each gets its verdict now)."""
    for p in d.iterdir():
        if p.is_file():
            p.read_bytes()


def thread_hop_us(n: int = 2000) -> float:
    async def hops() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await trio.to_thread.run_sync(int)
        return (time.perf_counter() - t0) / n * 1e6

    return trio.run(hops)

# -- cached opens while other reads are stuck on a slow source ---------------------

SLOWFS = Path(__file__).with_name("slowfs.py")
SLOW_DELAY = 0.2  # seconds per read of the slow file while it is slow
STUCK_READERS = 4


def _direct_read(path: Path) -> None:
    import mmap

    buf = mmap.mmap(-1, 64 * KiB)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)


def opens_beside_slow_reads(mnt: Path, control: Path, n: int) -> dict[str, Any]:
    """p50/p99 of open+close of a cached file, quiet and with readers stuck on `slow`."""
    for name in ("fast", "slow"):
        (mnt / name).read_bytes()  # scanned now (under vfile): later opens are cached
    p = str(mnt / "fast")
    _, quiet = timed(n, lambda _i: os.close(os.open(p, os.O_RDONLY)))
    (control / "delay").write_text(str(SLOW_DELAY))
    stop = threading.Event()

    def stuck_reader() -> None:
        while not stop.is_set():
            _direct_read(mnt / "slow")

    readers = [threading.Thread(target=stuck_reader) for _ in range(STUCK_READERS)]
    for t in readers:
        t.start()
    try:
        time.sleep(SLOW_DELAY)  # every reader inside a slow read
        _, busy = timed(n, lambda _i: os.close(os.open(p, os.O_RDONLY)))
    finally:
        stop.set()
        for t in readers:
            t.join()
        (control / "delay").unlink()
    return {"quiet_p50_us": pct(quiet, 0.5), "quiet_p99_us": pct(quiet, 0.99),
            "stuck_p50_us": pct(busy, 0.5), "stuck_p99_us": pct(busy, 0.99),
            "p99_stuck_vs_quiet": (pct(busy, 0.99) or 0) / (pct(quiet, 0.99) or 1)}


def slow_source_section(binary: Path, base: Path, n: int) -> dict[str, dict[str, Any]]:
    src, control = base / "slow-src", base / "slow-control"
    src.mkdir()
    control.mkdir()
    proc = subprocess.Popen([sys.executable, str(SLOWFS), str(src), str(control)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, dict[str, Any]] = {}
    try:
        _wait_mounted(src, proc)
        for name in ("c_passthrough_ll", "vfile_scan"):
            mnt = base / f"slow-{name}"
            mnt.mkdir()
            ctx = (mounted_c(binary, src, mnt) if name == "c_passthrough_ll" else
                   mounted_vfile(src, mnt, base / "slow-state"))
            with ctx:
                out[name] = opens_beside_slow_reads(mnt, control, n)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(src)], check=False, capture_output=True)
        proc.terminate()
        proc.wait(15)
    return out

# -- the run -------------------------------------------------------------------------


METRICS: dict[str, tuple[str, str]] = {
    "write_4k": ("4 KiB writes to one open file", "ops/s"),
    "create_write_close": ("create + write 4 KiB + close", "ops/s"),
    "open_close": ("open + close (cached verdict)", "ops/s"),
    "open_read_close": ("open + read 64 KiB + close", "ops/s"),
    "seq_write": ("sequential write, 1 MiB writes", "MiB/s"),
    "seq_read_warm": ("sequential read, warm", "MiB/s"),
    "stat": ("stat", "ops/s"),
    "parallel_cold_read": ("8 parallel readers, cold files", "MiB/s"),
}


def run_round(d: Path, src: Path | None, n: int, size: int, cold: int,  # noqa: PLR0917
              metrics: tuple[str, ...], pid: int | None
              ) -> dict[str, tuple[float, list[int], float | None]]:
    """Each workload once: (rate, latencies in ns, the server's CPU µs per op)."""
    runs: dict[str, tuple[Callable[[], tuple[float, list[int]]], float]] = {
        "write_4k": (lambda: write_4k(d, n), n),
        "create_write_close": (lambda: create_write_close(d, max(n // 10, 50)),
                               max(n // 10, 50)),
        "open_close": (lambda: open_close(d, n), n),
        "open_read_close": (lambda: open_read_close(d, max(n // 4, 50)), max(n // 4, 50)),
        "seq_write": (lambda: seq_write(d, src, size), SEQ_REPEATS * size / MiB),  # per MiB
        "seq_read_warm": (lambda: seq_read_warm(d, size), 2 * size / MiB),  # warm-up + timed
        "stat": (lambda: stat_op(d, n), n),
        "parallel_cold_read": (lambda: parallel_cold_read(d, src, cold), 8 * cold / MiB),
    }
    out: dict[str, tuple[float, list[int], float | None]] = {}
    for m in metrics:
        run, ops = runs[m]
        if pid is not None:
            wait_idle(pid)
        before = cpu_ns(pid) if pid is not None else 0
        rate, lat = run()
        cpu = (cpu_ns(pid) - before) / 1000 / ops if pid is not None else None
        out[m] = (rate, lat, cpu)
    return out


#: a server is idle once it ran less than this share of a CPU over IDLE_WINDOW seconds
IDLE_SHARE, IDLE_WINDOW, IDLE_MOST = 0.02, 0.1, 30.0


def wait_idle(pid: int) -> None:
    """Untimed, before each workload: until the server is idle. A scanning mount
    scans each file written after its close (a close never waits for it): the
    scans of the sequential writes' 64 MiB files ran on into the workloads after
    them (sequential read: 2,200 µs of server CPU per MiB against 30 without
    scanning), and into the next round's (README, data path, sw22)."""
    deadline = time.monotonic() + IDLE_MOST
    while time.monotonic() < deadline:
        before = cpu_ns(pid)
        time.sleep(IDLE_WINDOW)
        if cpu_ns(pid) - before < IDLE_SHARE * IDLE_WINDOW * 1e9:
            return


def pct(lat: list[int], q: float) -> float | None:
    if not lat:
        return None
    s = sorted(lat)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000


def print_slow(slow: dict[str, dict[str, Any]]) -> None:
    print(f"cached open+close beside {STUCK_READERS} reads stuck {SLOW_DELAY:g} s each on the "
          "source (bench/slowfs.py), p50 / p99 µs:")
    for name, r in slow.items():
        print(f"  {name:<18} quiet {r['quiet_p50_us']:>8.1f} / {r['quiet_p99_us']:<8.0f}"
              f" stuck {r['stuck_p50_us']:>8.1f} / {r['stuck_p99_us']:<8.0f}"
              f" p99 ratio {r['p99_stuck_vs_quiet']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer ops and smaller files")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--only-slow", action="store_true",
                    help="only the cached-opens-beside-slow-reads section")
    ap.add_argument("--skip-slow", action="store_true",
                    help="without the cached-opens-beside-slow-reads section")
    args = ap.parse_args(argv)
    n = 1000 if args.quick else 5000
    size = (16 if args.quick else 64) * MiB
    cold = (2 if args.quick else 8) * MiB

    base = Path(tempfile.mkdtemp(prefix="vfile-datapath-"))
    try:
        binary = build_passthrough_ll(base)
        slow = {} if args.skip_slow else slow_source_section(binary, base, n)
        if args.only_slow:
            print_slow(slow)
            print(json.dumps({"slow_source": slow}))
            return 0
        every = CONTENDERS + NOXATTR + LONG_TIMEOUT
        workloads = {c: (NOXATTR_METRICS if c in NOXATTR else
                         LONG_TIMEOUT_METRICS if c in LONG_TIMEOUT else tuple(METRICS))
                     for c in every}
        dirs = {c: (base / c / "src", base / c / "mnt") for c in every}
        for src, mnt in dirs.values():
            src.mkdir(parents=True)
            mnt.mkdir()
        with contextlib.ExitStack() as stack:
            pids: dict[str, int | None] = {"native": None}
            pids["c_passthrough_ll"] = stack.enter_context(
                mounted_c(binary, *dirs["c_passthrough_ll"]))
            pids["c_passthrough_ll_xattr"] = stack.enter_context(
                mounted_c(binary, *dirs["c_passthrough_ll_xattr"], ",xattr"))
            pids["pyfuse3_floor"] = stack.enter_context(mounted_floor(*dirs["pyfuse3_floor"]))
            pids["pyfuse3_floor_noxattr"] = stack.enter_context(
                mounted_floor(*dirs["pyfuse3_floor_noxattr"], "--noxattr"))
            pids["pyfuse3_floor_86400s"] = stack.enter_context(
                mounted_floor(*dirs["pyfuse3_floor_86400s"], "--timeout", "86400"))
            pids["vfile_noscan"] = stack.enter_context(
                mounted_vfile(*dirs["vfile_noscan"], base / "state-noscan", "--no-scan"))
            pids["vfile_scan"] = stack.enter_context(
                mounted_vfile(*dirs["vfile_scan"], base / "state-scan"))
            pids["vfile_scan_86400s"] = stack.enter_context(
                mounted_vfile(*dirs["vfile_scan_86400s"], base / "state-scan-86400s",
                              "--cache-timeout", "86400"))
            pids["vfile_scan_noxattr"] = stack.enter_context(
                mounted_vfile(*dirs["vfile_scan_noxattr"], base / "state-scan-noxattr",
                              "-o", "noxattr"))
            where = {c: (dirs[c][0] if c == "native" else dirs[c][1]) for c in every}
            source = {c: (None if c == "native" else dirs[c][0]) for c in every}
            for c in every:
                prepare(where[c], cold)
                warm_up(where[c])
            samples: dict[str, dict[str, list[tuple[float, list[int], float | None]]]] = {
                c: {m: [] for m in workloads[c]} for c in every}
            for _ in range(args.rounds):
                for c in every:
                    for m, res in run_round(where[c], source[c], n, size, cold,
                                            workloads[c], pids[c]).items():
                        samples[c][m].append(res)
            hop = thread_hop_us()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for c in every:
        results[c] = {}
        for m in workloads[c]:
            rates = [r for r, _, _ in samples[c][m]]
            lat = [x for _, ls, _ in samples[c][m] for x in ls]
            cpus = [u for _, _, u in samples[c][m] if u is not None]
            results[c][m] = {"rate": statistics.median(rates), "p50_us": pct(lat, 0.5),
                             "p99_us": pct(lat, 0.99),
                             "server_cpu_us": statistics.median(cpus) if cpus else None}
    ratios = {c: {m: results[c][m]["rate"] / results["c_passthrough_ll"][m]["rate"]
                  for m in workloads[c]} for c in every}
    vs_native = {c: {m: results[c][m]["rate"] / results["native"][m]["rate"]
                     for m in workloads[c]} for c in NOXATTR}
    load = os.getloadavg()
    report = {"config": {"ops": n, "seq_MiB": size // MiB, "cold_MiB": cold // MiB,
                         "rounds": args.rounds, "cpus": os.cpu_count(), "load": load},
              "thread_hop_us": hop, "results": results, "ratios": ratios,
              "noxattr_vs_native": vs_native, "slow_source": slow}

    w = 14
    short = {"native": "native", "c_passthrough_ll": "C ll", "pyfuse3_floor": "pyfuse3 floor",
             "vfile_noscan": "vfile noscan", "vfile_scan": "vfile scan",
             "pyfuse3_floor_noxattr": "pyfuse3 floor -o noxattr",
             "vfile_scan_noxattr": "vfile scan -o noxattr",
             "c_passthrough_ll_xattr": "C passthrough_ll -o xattr"}
    print(f"{'workload':<38}" + "".join(f"{short[c]:>{w}}" for c in CONTENDERS)
          + f"{'floor/C':>9}{'scan/C':>8}{'scan/floor':>11}")
    for m, (label, unit) in METRICS.items():
        print(f"{label + ', ' + unit:<38}" + "".join(
            f"{results[c][m]['rate']:>{w},.0f}" for c in CONTENDERS)
            + f"{ratios['pyfuse3_floor'][m]:>9.2f}{ratios['vfile_scan'][m]:>8.2f}"
            + f"{ratios['vfile_scan'][m] / ratios['pyfuse3_floor'][m]:>11.2f}")
    print("xattrs on and off, ops/s (x native, x C passthrough_ll default):")
    for m in NOXATTR_METRICS:
        print(f"  {METRICS[m][0]}:")
        for c in NOXATTR:
            print(f"    {short[c]:<28}{results[c][m]['rate']:>10,.0f}"
                  f"{vs_native[c][m]:>8.2f}x native{ratios[c][m]:>8.2f}x C")
    print("C passthrough_ll's timeouts (86400 s; vfile --cache-timeout 86400), ops/s "
          "(x C passthrough_ll):")
    for m in LONG_TIMEOUT_METRICS:
        for c in LONG_TIMEOUT:
            r, x = results[c][m], ratios[c][m]
            print(f"  {METRICS[m][0] + ', ' + c:<52}{r['rate']:>10,.0f}{x:>8.2f}x C"
                  f"  (server CPU {r['server_cpu_us']:.1f} µs per op)")
    print(f"{'  server CPU µs per op (per MiB)':<38}")
    for m, (label, _unit) in METRICS.items():
        print(f"{'  ' + label:<38}" + "".join(
            f"{'-' if (u := results[c][m]['server_cpu_us']) is None else f'{u:,.1f}':>{w}}"
            for c in CONTENDERS) + "".join(
            f"  {short[c]} {results[c][m]['server_cpu_us']:,.1f}"
            for c in NOXATTR if m in results[c]))
    print(f"{'  p50 / p99 µs':<38}")
    for m, (label, _unit) in METRICS.items():
        if results["native"][m]["p50_us"] is None:
            continue
        print(f"{'  ' + label:<38}" + "".join(
            f"{results[c][m]['p50_us']:>6.1f}/{results[c][m]['p99_us']:<6.0f}"
            for c in CONTENDERS))
    print_slow(slow)
    print(f"thread hop (trio.to_thread round trip): {hop:.1f} µs; "
          "load average " + " ".join(f"{x:.2f}" for x in load))
    return iotiming.emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
