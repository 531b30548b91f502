"""What the torn-journal check costs (journal.torn): 100k and 1M deferred entries.

    .venv/bin/python bench/torncheck.py [--sizes 100000,1000000] [--json PATH]

After an unclean stop that may have lost the page cache (no witness vouches), a
mount checks its journal in a child before opening it (README "Durability of
journal records"). For each size this fills a journal with that many deferred
entries (each with an exposure, as an outage's unscanned reads leave them), marks
the run unclean, and times, side by side: the child's check from a cold page cache
(`echo 1 > drop_caches`, root only) and warm; and, for scale, the child's start
alone (a clean journal: it answers without reading the tables).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vfile.journal import Journal, tables, torn, watermark
from vfile.journal.records import Exposure, Identity, Reason

BATCH = 2000


async def fill(journal: Journal, n: int) -> None:
    async def one(i: int) -> None:
        exp = Exposure(uid=1000, pid=4242, command="reader", time=time.time())
        await journal.defer(f"d{i // 100}/f{i % 100}", Identity(1, i + 10, 4096, i, i),
                            Reason.MODIFIED, "default", exposure=exp, durable=False)

    for start in range(0, n, BATCH):
        async with trio.open_nursery() as nursery:
            for i in range(start, min(n, start + BATCH)):
                nursery.start_soon(one, i)


def set_run(where: Path, marker: bytes | None) -> None:
    """`marker`, or None: a clean stop's (naming its own transaction, as a close writes it)."""
    env = lmdb.open(str(where), max_dbs=8, map_size=4 << 30)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            txn.put(watermark.RUN_KEY, marker or tables.clean_marker(txn.id()), db=meta)
        env.sync(True)
    finally:
        env.close()


def drop_caches() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def timed(where: Path) -> tuple[float, int]:
    t = time.monotonic()
    rc, _ = torn._child("verify", str(where), "", timeout=3600)
    return time.monotonic() - t, rc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for n in map(int, a.sizes.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="vfile-torncheck-", dir="/var/tmp"))
        try:
            j = Journal.open(tmp, sync=False, map_size=4 << 30)
            trio.run(fill, j, n)
            j.close()
            set_run(tmp, b"running:bench")
            size = (tmp / "data.mdb").stat().st_size
            cold = drop_caches()
            check_cold, rc1 = timed(tmp)
            check_warm, rc2 = timed(tmp)
            set_run(tmp, None)
            clean, rc3 = timed(tmp)
            rows.append({"entries": n, "journal_mib": round(size / 2**20, 1),
                         "check_cold_s": round(check_cold, 2) if cold else None,
                         "check_warm_s": round(check_warm, 2),
                         "child_clean_s": round(clean, 2), "status": [rc1, rc2, rc3]})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print("| entries | journal MiB | check cold, s | check warm, s | child, clean stop, s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['entries']:,} | {r['journal_mib']} | {r['check_cold_s']} | "
              f"{r['check_warm_s']} | {r['child_clean_s']} |")
    print("load average", " ".join(load))
    out = {"rows": rows, "loadavg": load}
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
