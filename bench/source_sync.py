"""The source's syncfs per background sync (sd24) under a create load.

    .venv/bin/python bench/source_sync.py [--seconds 20] [--distinct]

One scanning mount (embedded engine) of a fresh directory under /tmp; one writer
creates 4 KiB files through it for `--seconds` (the same bytes each time, or
`--distinct` random ones), then prints the creates and the journal's durability
counters for the source's sync (`vfile status --json`: source_syncs, their mean and
max time, timeouts) as JSON. Always unmounts.
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

VFILE = [sys.executable, "-m", "vfile"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--distinct", action="store_true")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="vfile-source-sync-"))
    src, mnt, state = base / "src", base / "mnt", base / "state"
    src.mkdir()
    mnt.mkdir()
    subprocess.run([*VFILE, "mount", "--state-dir", str(state), str(src), str(mnt)], check=True)
    try:
        n, data, started = 0, b"x" * 4096, time.monotonic()
        while time.monotonic() - started < args.seconds:
            (mnt / f"f{n}").write_bytes(os.urandom(4096) if args.distinct else data)
            n += 1
        took = time.monotonic() - started
        time.sleep(2)  # the last background sync
        status = json.loads(subprocess.run([*VFILE, "status", str(mnt), "--json"], check=True,
                                           capture_output=True).stdout)
        d = status["journal"]["durability"]
        syncs = d["source_syncs"]
        print(json.dumps({
            "creates": n, "creates_per_s": round(n / took), "source_syncs": syncs,
            "source_sync_ms_mean": round(d["source_sync_ms_total"] / max(syncs, 1), 1),
            "source_sync_ms_max": d["source_sync_ms_max"],
            "source_sync_timeouts": d["source_sync_timeouts"], "fsyncs": d["fsyncs"],
            "load": os.getloadavg()[0]}))
    finally:
        subprocess.run([*VFILE, "unmount", str(mnt)], check=False)
        time.sleep(1)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
