"""Native directory vs the vfile passthrough mount, side by side in one run.

    .venv/bin/python bench/passthrough.py [--quick] [--json PATH]

Mounts a temp directory with the real `vfile mount` command (background
mode, as a user would), runs the same workloads on a native directory on the
same filesystem and through the mount, prints a table, and writes JSON with
per-metric values and `ratios` (mount / native; higher is better for every
metric). Always unmounts.

Caches: cold sequential reads drop the page cache of the file first with
posix_fadvise(DONTNEED) — on the native file, and for the mount on both the
FUSE file and its source file — so both sides read from the device. Every
other read workload runs warm (after the sequential read), on both sides.
Writes are timed to the final close() (which, through the mount, includes
the writeback to the source), without fsync on either side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Runnable from a checkout: the repository root first, for the shared bench helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.iotiming import drop_cache, seq_write

MiB = 1024 * 1024
BLOCK = 4096


def seq_read(d: Path, size: int, drop: Callable[[], None] | None) -> float:
    if drop is not None:
        drop()
    t0 = time.perf_counter()
    fd = os.open(d / "seq", os.O_RDONLY)
    total = 0
    while chunk := os.read(fd, MiB):
        total += len(chunk)
    os.close(fd)
    assert total == size, (total, size)
    return size / MiB / (time.perf_counter() - t0)


def rand_read(d: Path, size: int, n: int) -> float:
    rng = random.Random(42)
    offsets = [rng.randrange(size // BLOCK) * BLOCK for _ in range(n)]
    fd = os.open(d / "seq", os.O_RDONLY)
    t0 = time.perf_counter()
    for off in offsets:
        os.pread(fd, BLOCK, off)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return n / elapsed


def write_4k(d: Path, n: int) -> float:
    buf = os.urandom(BLOCK)
    t0 = time.perf_counter()
    fd = os.open(d / "w4k", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(n):
        os.write(fd, buf)
    os.close(fd)
    return n / (time.perf_counter() - t0)


def open_close(d: Path, n: int) -> float:
    (d / "oc").write_bytes(b"x")
    p = str(d / "oc")
    t0 = time.perf_counter()
    for _ in range(n):
        os.close(os.open(p, os.O_RDONLY))
    return n / (time.perf_counter() - t0)


def stat_rate(d: Path, n: int) -> float:
    names = []
    for i in range(100):
        (d / f"st{i}").write_bytes(b"x")
        names.append(str(d / f"st{i}"))
    t0 = time.perf_counter()
    for i in range(n):
        os.stat(names[i % 100])
    return n / (time.perf_counter() - t0)


def create_rate(d: Path, n: int) -> float:
    (d / "cr").mkdir()
    buf = os.urandom(BLOCK)
    base = str(d / "cr")
    t0 = time.perf_counter()
    for i in range(n):
        fd = os.open(f"{base}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, buf)
        os.close(fd)
    return n / (time.perf_counter() - t0)


METRICS = {
    "seq_write_MiBps": "sequential write (1 MiB writes), MiB/s",
    "seq_read_cold_MiBps": "sequential read, cold cache, MiB/s",
    "seq_read_warm_MiBps": "sequential read, warm cache, MiB/s",
    "rand_read_4k_iops": "4 KiB random reads (warm), ops/s",
    "write_4k_iops": "4 KiB sequential writes, ops/s",
    "open_close_per_s": "open+close of one file, /s",
    "stat_per_s": "stat of 100 files round-robin, /s",
    "create_write_close_per_s": "create + write 4 KiB + close, /s",
}


def run_all(d: Path, drop: Callable[[], None], size: int, n: int) -> dict[str, float]:
    out = {"seq_write_MiBps": seq_write(d, size)}
    out["seq_read_cold_MiBps"] = seq_read(d, size, drop)
    out["seq_read_warm_MiBps"] = seq_read(d, size, None)
    out["rand_read_4k_iops"] = rand_read(d, size, n)
    out["write_4k_iops"] = write_4k(d, n)
    out["open_close_per_s"] = open_close(d, n)
    out["stat_per_s"] = stat_rate(d, n)
    out["create_write_close_per_s"] = create_rate(d, max(n // 10, 100))
    return out


def vfile(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vfile", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 MiB and 5000 ops instead of "
                    "256 MiB and 20000 ops")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--mount-option", "-o", action="append", default=[],
                    help="extra `vfile mount -o` options (e.g. no_writeback)")
    args = ap.parse_args(argv)
    size = (32 if args.quick else 256) * MiB
    n = 5000 if args.quick else 20000

    base = Path(tempfile.mkdtemp(prefix="vfile-bench-"))
    native, src, mnt = base / "native", base / "src", base / "mnt"
    for p in (native, src, mnt):
        p.mkdir()
    mounted = False
    try:
        opts = [x for o in args.mount_option for x in ("-o", o)]
        vfile("mount", *opts, "--log-file", str(base / "server.log"), str(src), str(mnt))
        mounted = True
        results = {
            "native": run_all(native, lambda: drop_cache(native / "seq"), size, n),
            "mount": run_all(mnt, lambda: drop_cache(mnt / "seq", src / "seq"), size, n),
        }
    finally:
        if mounted:
            vfile("unmount", str(mnt))
        elif str(mnt) in Path("/proc/self/mounts").read_text():
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        shutil.rmtree(base, ignore_errors=True)

    ratios = {k: results["mount"][k] / results["native"][k] for k in METRICS}
    report = {"config": {"size_MiB": size // MiB, "ops": n, "quick": args.quick,
                         "mount_options": args.mount_option, "cpus": os.cpu_count()},
              **results, "ratios": ratios}
    print(f"{'metric':<52} {'native':>12} {'vfile':>12} {'ratio':>7}")
    for k, label in METRICS.items():
        print(f"{label:<52} {results['native'][k]:>12.0f} {results['mount'][k]:>12.0f} "
              f"{ratios[k]:>7.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
