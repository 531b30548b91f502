"""p28: syscalls per create of each thread of a scanning mount's server, and its journal's
transactions per create, while one writer creates distinct 4 KiB files.

    .venv/bin/python docs/trials/p28-threadsys.py CHECKOUT [creates] [-- vfile mount options]

`strace -f` on the server for the timed creates (strace slows the server ~2x, so rates
under it mean nothing; counts do); the journal's counters from `vfile status --json`
(`journal.durability`: `batches` = transactions, `ops` = operations) before and after.
Environment variables (e.g. a trial patch's VFILE_P28_*) pass through to the mount.
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(sys.argv[1]).resolve()
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
EXTRA = sys.argv[4:] if len(sys.argv) > 3 and sys.argv[3] == "--" else []
sys.path.insert(0, str(CHECKOUT))
from bench.iotiming import server_pid  # noqa: E402

PY = str(CHECKOUT / ".venv/bin/python")


def creates(d: Path, n: int) -> None:
    d.mkdir()
    for i in range(n):
        fd = os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, os.urandom(4096))
        os.close(fd)


def durability(mnt: Path) -> dict[str, int]:
    out = subprocess.run([PY, "-m", "vfile", "status", "--json", str(mnt)], cwd=CHECKOUT,
                         capture_output=True, text=True, check=True).stdout
    return {k: v for k, v in json.loads(out)["journal"]["durability"].items()
            if isinstance(v, int)}


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="p28sys-"))
    src, mnt = base / "src", base / "mnt"
    src.mkdir()
    mnt.mkdir()
    subprocess.run([PY, "-m", "vfile", "mount", "--state-dir", str(base / "state"),
                    "--log-file", str(base / "log"), *EXTRA, str(src), str(mnt)],
                   check=True, cwd=CHECKOUT)
    try:
        pid = server_pid(mnt)
        creates(mnt / "warm", 300)
        time.sleep(0.5)
        before = durability(mnt)
        trace = base / "strace"
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(pid), "-o", str(trace)])
        time.sleep(1.0)  # attached to every thread
        creates(mnt / "run", N)
        time.sleep(0.3)  # the last close scans and commits
        names = {t: Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()
                 for t in os.listdir(f"/proc/{pid}/task")}
        names[str(pid)] = "main (trio)"
        tracer.terminate()
        tracer.wait()
        after = durability(mnt)
        print("journal per create:", {k: round((after[k] - before[k]) / N, 3)
                                      for k in ("batches", "ops", "fsyncs")})
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for line in trace.read_text().splitlines():
            m = re.match(r"(\d+)\s+(\w+)\(", line)
            if m is None:  # "<... resumed>" halves and signals: counted at their start
                continue
            counts[names.get(m.group(1), f"ended {m.group(1)}"), m.group(2)] += 1
        for (thread, call), n in counts.most_common(30):
            print(f"{thread:<22} {call:<16} {n / N:6.2f} per create")
    finally:
        subprocess.run([PY, "-m", "vfile", "unmount", str(mnt)], cwd=CHECKOUT, check=False)


if __name__ == "__main__":
    main()
