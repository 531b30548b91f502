"""Journal write throughput: group commit against one transaction per record.

For 1, 16 and 64 concurrent trio callers, each looping `Journal.defer` on its
own paths for a fixed time, this measures durable records/s and the p50/p99
latency of one `defer` (from call to durable return), with group commit and
with one LMDB transaction per record, in one run, on a fresh journal each
(fsync on: `sync=True`, the default). Prints a table; `--json PATH` writes the
figures, including `group_commit_records_per_s` and `single_txn_records_per_s`
at 64 callers.

    .venv/bin/python bench/commit.py [--quick] [--json PATH] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfile.journal import Identity, Journal, Reason

CALLERS = (1, 16, 64)


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _run(state_dir: Path, callers: int, group: bool, seconds: float,
               sync: bool) -> dict[str, Any]:
    journal = Journal.open(state_dir, sync=sync, group_commit=group)
    latencies: list[float] = []
    ident = Identity(1, 1, 4096, 1, 1)
    deadline = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await journal.defer(f"/bench/{n}/{i}", ident, Reason.UNAVAILABLE, "default")
            latencies.append(time.perf_counter() - t0)
            i += 1

    try:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(callers):
                nursery.start_soon(caller, n)
        elapsed = time.perf_counter() - start
        counters = journal.durability()
        assert journal.contents()["deferred"] == len(latencies)
    finally:
        journal.close()
    latencies.sort()
    return {
        "callers": callers, "mode": "group" if group else "single", "records": len(latencies),
        "seconds": elapsed, "records_per_s": len(latencies) / elapsed,
        "p50_ms": _pct(latencies, 0.50) * 1e3, "p99_ms": _pct(latencies, 0.99) * 1e3,
        "mean_batch": counters["ops"] / max(1, counters["batches"]),
    }


async def bench(base: Path, seconds: float, sync: bool) -> list[dict[str, Any]]:
    rows = []
    for callers in CALLERS:
        for group in (True, False):
            d = base / f"{callers}-{'group' if group else 'single'}"
            rows.append(await _run(d, callers, group, seconds, sync))
            shutil.rmtree(d)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 s per case instead of 4 s")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    ap.add_argument("--dir", metavar="DIR", help="where to create the journals "
                    "(default: a temporary directory under the current one: a real disk)")
    ap.add_argument("--no-sync", action="store_true", help="sync=False (not durable)")
    args = ap.parse_args()
    seconds = 1.0 if args.quick else 4.0
    base = Path(tempfile.mkdtemp(prefix=".bench-journal-", dir=args.dir or os.getcwd()))
    try:
        rows = trio.run(bench, base, seconds, not args.no_sync)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"journal defer, sync={'off' if args.no_sync else 'on'}, {seconds:.0f} s per case")
    print(f"{'callers':>7} {'mode':>6} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'batch':>6}")
    for r in rows:
        print(f"{r['callers']:>7} {r['mode']:>6} {r['records_per_s']:>10.0f} "
              f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['mean_batch']:>6.1f}")
    at64 = {r["mode"]: r for r in rows if r["callers"] == 64}
    summary = {
        "sync": not args.no_sync, "seconds_per_case": seconds, "cases": rows,
        "group_commit_records_per_s": at64["group"]["records_per_s"],
        "single_txn_records_per_s": at64["single"]["records_per_s"],
        "speedup_at_64": at64["group"]["records_per_s"] / at64["single"]["records_per_s"],
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "median_group_p50_ms": statistics.median(r["p50_ms"] for r in rows
                                                 if r["mode"] == "group"),
    }
    print(f"64 callers: group commit {summary['group_commit_records_per_s']:.0f} records/s, "
          f"one txn per record {summary['single_txn_records_per_s']:.0f} records/s "
          f"({summary['speedup_at_64']:.1f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
