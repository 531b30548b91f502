"""What a big journal costs a mount at rest: status, stats, list --limit, idle CPU.

    .venv/bin/python bench/journal_scale.py [--entries 1000000] [--json PATH]

1. Builds a journal of N deferred entries (default 1,000,000) directly through
   the journal API (`Journal.defer`, group-committed by 256 concurrent tasks,
   without fsync), a few profiles, paths shaped like a data directory.
2. Times, in this process on that journal: `contents()`, `profile_debts()` (the
   quota's measure) and `list_deferred(limit=N)` for N = 10, 1,000, 100,000.
3. Times the CLI: `vfile journal stats --state-dir` and `vfile journal list
   --limit 10` (whole commands, Python start-up included).
4. Mounts an empty source with that state directory (an appliance that is down,
   so the drain stays idle as in a long outage; a quota
   on the default profile so the quota monitor runs), and with nothing
   happening measures the server's CPU over `--idle` seconds (default 10) and the
   latency of the `status` control command (p50 / max of 20, the reply as
   `vfile status` gets it, without the CLI's start-up) and of `vfile status`.
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
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import mounted, server_pids, vfile_cmd  # type: ignore[import-not-found]

from vfile import control
from vfile.journal import Exposure, Identity, Journal, Reason

PROFILES = ("default", "uploads", "scratch")


async def build(state: Path, n: int) -> float:
    t0 = time.perf_counter()
    with Journal.open(state, sync=False) as j:
        async def worker(k: int, step: int) -> None:
            for i in range(k, n, step):
                await j.defer(f"guest/d{i // 10000:03d}/s{i // 100 % 100:02d}/file{i:07d}.dat",
                              Identity(2049, i, 1024 + i % 4096, i, i), Reason.WINDOW,
                              PROFILES[i % 7 % 3], exposure=Exposure(1000, 4242, "rsync", 1.0),
                              durable=False)

        async with trio.open_nursery() as nursery:
            for k in range(256):
                nursery.start_soon(worker, k, 256)
        await j.sync()
    return time.perf_counter() - t0


def timed(fn: Any, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cli_time(*args: str) -> float:
    t = time.perf_counter()
    res = subprocess.run(vfile_cmd(*args), capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{args}: {res.stderr}")
    return took


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measure")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vfile-bench-jscale-"))
    out: dict[str, Any] = {"entries": args.entries}
    try:
        state = tmp / "state"
        out["build_seconds"] = round(trio.run(build, state, args.entries), 1)
        out["data_mdb_mib"] = round((state / "data.mdb").stat().st_size / 2**20, 1)
        with Journal.open(state, readonly=True) as j:
            out["api_ms"] = {
                "contents": round(timed(j.contents) * 1000, 2),
                "profile_debts": round(timed(j.profile_debts) * 1000, 2),
                **{f"list_limit_{n}": round(timed(lambda n=n: j.list_deferred(limit=n),
                                                  3) * 1000, 2)
                   for n in (10, 1000, 100_000)},
            }
            assert j.contents()["deferred"] == args.entries
        out["cli_s"] = {
            "journal_stats": round(cli_time("journal", "stats", "--state-dir", str(state)), 3),
            "journal_list_limit_10": round(cli_time("journal", "list", "--state-dir",
                                                    str(state), "--limit", "10"), 3),
        }
        src, mnt = tmp / "src", tmp / "mnt"
        src.mkdir()
        mnt.mkdir()
        conf = tmp / "vfile.toml"
        # An appliance that is not there: the drain stays idle, as in a long outage.
        conf.write_text(f'[mount]\nstate_dir = "{state}"\n'
                        f'appliances = ["clamd://{tmp / "absent.sock"}"]\n'
                        '[[profile]]\nname = "default"\n'
                        '[profile.quota]\nmax_entries = 2000000\n')
        with mounted(src, mnt, "--config", str(conf)):
            [pid] = server_pids(mnt)
            time.sleep(2.0)  # let start-up settle
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(args.idle)
            cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            lat = []
            for _ in range(20):
                t = time.perf_counter()
                st = control.call(mnt, "status", None, timeout=30)
                lat.append(time.perf_counter() - t)
            lat.sort()
            assert st["journal"]["deferred"] == args.entries
            out["mounted"] = {
                "idle_cpu_percent_of_a_core": round(cpu * 100, 2),
                "status_control_ms_p50": round(lat[len(lat) // 2] * 1000, 2),
                "status_control_ms_max": round(lat[-1] * 1000, 2),
                "vfile_status_cli_s": round(cli_time("status", str(mnt)), 3),
                "quota": st["profiles"][-1]["quota"],
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
