"""What the x17 fixes cost: the journal's rewrite after a failed fsync, and the check
that an idle clamd session connection has nothing unasked-for to read.

    python bench/resync.py [--sizes 16,128] [--json PATH]

For each size (MiB of records), an LMDB environment like the journal's (sync off,
fsynced explicitly) is filled on /var/tmp; then `EnvFsync` rewrites every used page
(what it does once after a failed fsync, holding LMDB's write lock) and one fsync
follows. The session check (`clamd_session._unasked`, one poll(2) per reuse of an
idle connection) is timed on an idle unix socket pair. Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
import timeit
from pathlib import Path

import lmdb

from vfile.journal.syncer import EnvFsync
from vfile.scanner.clamd_session import _unasked


def rewrite(mib: int) -> dict[str, float]:
    where = tempfile.mkdtemp(dir="/var/tmp", prefix="vfile-resync-")
    try:
        env = lmdb.open(where, map_size=4 << 30, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            for i in range(mib * (1 << 20) // 300):
                txn.put(b"k%09d" % i, os.urandom(200))
        env.sync(True)
        size = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        fsync = EnvFsync(env)
        fsync.rewrite_due = True  # as after a failed fsync
        t0 = time.perf_counter()
        fsync._rewrite()
        t1 = time.perf_counter()
        env.sync(True)
        t2 = time.perf_counter()
        env.close()
        return {"data_mib": size / (1 << 20), "rewrite_ms": 1e3 * (t1 - t0),
                "fsync_after_ms": 1e3 * (t2 - t1)}
    finally:
        shutil.rmtree(where, ignore_errors=True)


def unasked_us(n: int = 100_000) -> float:
    a, b = socket.socketpair()
    with a, b:
        return 1e6 * timeit.timeit(lambda: _unasked(a.fileno()), number=n) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,128", help="MiB of records, comma-separated")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    rows = [rewrite(int(s)) for s in args.sizes.split(",")]
    check = unasked_us()
    out = {"loadavg": Path("/proc/loadavg").read_text().split()[:3], "rewrite": rows,
           "unasked_check_us": check}
    print(f"{'data file':>10} {'rewrite':>9} {'fsync after':>12}")
    for r in rows:
        print(f"{r['data_mib']:8.0f} MiB {r['rewrite_ms']:7.0f} ms {r['fsync_after_ms']:9.0f} ms")
    print(f"idle-connection check: {check:.2f} us per reuse")
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
