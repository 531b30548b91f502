"""The verdict table's size after many rewrites, with and without collection.

`REWRITES` rewrites of `FILES` real files (round robin), each recorded as the
gate records a rewrite: a write intent (`defer`) and its close scan's verdict
(`complete`). Halfway through, the signature version changes. Two runs side
by side on fresh journals: without collection (the verdict table only grows)
and with `vfile.filter.verdict_gc.collect` every `--every` rewrites (as the mount's
background collector does). Reports verdict rows, LMDB pages in use and the
size of data.mdb. Durability is off (sync=False): sizes do not depend on it.

    .venv/bin/python bench/verdicts.py [--rewrites N] [--files N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfile.filter.verdict_gc import collect
from vfile.journal import Identity, Journal, Reason
from vfile.journal.records import VerdictOutcome, VerdictRecord

WORKERS = 32


async def _run(base: Path, rewrites: int, files: int, every: int | None) -> dict[str, Any]:
    src, state = base / "src", base / "state"
    src.mkdir()
    paths = [src / f"f{i:05d}" for i in range(files)]
    for p in paths:
        p.write_bytes(b"0")
    j = Journal.open(state, sync=False, map_size=256 << 20)
    started = time.perf_counter()
    collected = 0
    done = 0
    try:
        async def worker(k: int, lock: trio.Lock) -> None:
            nonlocal done, collected
            i = k
            while i < rewrites:
                path = paths[i % files]
                rel = path.name
                before = Identity.from_stat(path.stat())
                seq = await j.defer(rel, before, Reason.MODIFIED, "default")
                path.write_bytes(str(i).encode())
                sig = "S1" if i < rewrites // 2 else "S2"
                await j.complete(rel, seq, VerdictRecord(Identity.from_stat(path.stat()), sig,
                                                         VerdictOutcome.CLEAN, "", "bench",
                                                         time.time()))
                done += 1
                if every and done % every == 0:
                    async with lock:
                        got = await collect(j, source=str(src), signatures=[sig])
                        collected += got.collected
                i += WORKERS

        lock = trio.Lock()
        async with trio.open_nursery() as n:
            for k in range(WORKERS):
                n.start_soon(worker, k, lock)
        if every:
            collected += (await collect(j, source=str(src), signatures=["S2"])).collected
        stats = j.contents()
    finally:
        j.close()
    return {"collect_every": every, "rewrites": rewrites, "files": files,
            "verdicts": stats["verdicts"], "collected": collected,
            "map_used_bytes": stats["map_used"],
            "data_mdb_bytes": os.path.getsize(state / "data.mdb"),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rewrites", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=1_000)
    ap.add_argument("--every", type=int, default=10_000, help="collect every N rewrites")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    ap.add_argument("--dir", help="where the temporary journals go (default: /tmp)")
    args = ap.parse_args()
    results = []
    for every in (None, args.every):
        base = Path(tempfile.mkdtemp(prefix="vfile-bench-verdicts-", dir=args.dir))
        try:
            results.append(trio.run(_run, base, args.rewrites, args.files, every))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{args.rewrites} rewrites of {args.files} files, signature update halfway")
    print(f"{'collection':>16} {'verdicts':>9} {'collected':>10} {'pages MiB':>10} "
          f"{'data.mdb MiB':>13} {'s':>6}")
    for r in results:
        label = "none" if r["collect_every"] is None else f"every {r['collect_every']}"
        print(f"{label:>16} {r['verdicts']:>9} {r['collected']:>10} "
              f"{r['map_used_bytes'] / 2**20:>10.1f} {r['data_mdb_bytes'] / 2**20:>13.1f} "
              f"{r['seconds']:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
