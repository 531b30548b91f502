"""Another local user floods a mount's `--metrics` port with silent connections (s26):
what the mount server holds meanwhile (descriptors, RSS) and how long 200 reads
through the mount take, quiet and under the flood. Needs root and a second uid.

    .venv/bin/python bench/metrics_flood.py [--uid 1001] [--clients 2] [--seconds 12]

Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the other user's client: hold as many connections as it can for SECONDS
HOLD = """
import resource, socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
held, end = [], time.monotonic() + secs
while time.monotonic() < end:
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", port))
        held.append(s)
    except OSError:
        s.close()
        if len(held) > 100:
            held.pop(0).close()
        time.sleep(0.01)
"""


def _server_pid(mnt: Path) -> int:
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in cmd and os.fsencode(mnt) in cmd:
            return int(pid)
    raise SystemExit("no server")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reads(mnt: Path, n: int) -> float:
    t = time.monotonic()
    for i in range(n):
        (mnt / f"f{i}").read_bytes()
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uid", type=int, default=1001)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=12.0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vfile-flood-", dir="/tmp"))
    src, mnt, state = base / "src", base / "mnt", base / "state"
    src.mkdir()
    mnt.mkdir()
    for i in range(200):
        (src / f"f{i}").write_bytes(b"hello %d\n" % i)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "vfile", "mount", "--foreground",
                               "--metrics", f"127.0.0.1:{port}", "--state-dir", str(state),
                               str(src), str(mnt)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert server.poll() is None and time.monotonic() < deadline, "no mount"
            time.sleep(0.1)
        pid = _server_pid(mnt)
        _reads(mnt, 200)  # first opens: their scans
        out = {"fds_quiet": len(os.listdir(f"/proc/{pid}/fd")), "rss_kb_quiet": _rss_kb(pid),
               "reads_s_quiet": round(_reads(mnt, 200), 3)}
        flood = [subprocess.Popen(["setpriv", f"--reuid={args.uid}", f"--regid={args.uid}",
                                   "--clear-groups", "/usr/bin/python3", "-c", HOLD, str(port),
                                   str(args.seconds)]) for _ in range(args.clients)]
        time.sleep(args.seconds / 2)
        out["fds_flood"] = len(os.listdir(f"/proc/{pid}/fd"))
        out["rss_kb_flood"] = _rss_kb(pid)
        out["reads_s_flood"] = round(_reads(mnt, 200), 3)
        for p in flood:
            p.wait(args.seconds + 30)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        server.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out))
    print(f"{'':12}{'quiet':>10}{'flood':>10}")
    for key in ("fds", "rss_kb", "reads_s"):
        print(f"{key:12}{out[key + '_quiet']:>10}{out[key + '_flood']:>10}")


if __name__ == "__main__":
    main()
