"""Soak: a mixed workload through a mount, with periodic outages and windows.

Runs the built-in appliance behind the fault proxy, mounts a fresh source
through it (fail mode `safe`, 0.5 s deadline, a fast-recovering pool), and
for `--minutes` keeps writer threads (create, rewrite, append, truncate,
rename, unlink) and reader threads busy, while every `--period` seconds
either the appliance goes down for a while (the proxy cycles through refuse,
blackhole, reset, garbage) or a quiesce window is opened and later resumed.

Every `--interval` seconds it samples the mount server's RSS and open fds
(from /proc/PID) and the journal depth (`vfile status --json`). At the end
the workload stops, the fault is cleared, the drain gets a moment, the mount
is taken down, and every file in the source must have a journal entry or a
clean verdict for its current identity (`lost` lists those that have not).
Prints a table and JSON; `--json PATH` also writes the JSON.

    .venv/bin/python bench/soak.py --minutes 0.5 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import mounted  # type: ignore[import-not-found]
from outage import (  # type: ignore[import-not-found]
    running_appliance,
    running_proxy,
    signature_version,
    status,
    unaccounted,
    write_config,
)

from vfile import control

FAULTS = ("refuse", "blackhole", "reset", "garbage")
FILES = 40
DRAIN_GRACE = 20.0


def proc_sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open descriptors) of process `pid`."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Workload:
    """Writer and reader threads over FILES names; stop() and join()."""

    def __init__(self, mnt: Path, writers: int, readers: int, seed: int) -> None:
        self.mnt = mnt
        self.stop = threading.Event()
        self.ops = 0
        self.opens = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._write, args=(seed + k,), daemon=True)
                        for k in range(writers)]
        self.threads += [threading.Thread(target=self._read, args=(seed + 100 + k,), daemon=True)
                         for k in range(readers)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _count(self, ops: int = 0, opens: int = 0) -> None:
        with self._lock:
            self.ops += ops
            self.opens += opens

    def _write(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            a = self.mnt / f"f{rng.randrange(FILES)}"
            b = self.mnt / f"f{rng.randrange(FILES)}"
            op = rng.choice(["write", "write", "append", "truncate", "rename", "unlink"])
            try:
                if op == "write":
                    a.write_bytes(rng.randbytes(rng.choice([100, 10_000, 200_000])))
                elif op == "append":
                    with a.open("ab") as f:
                        f.write(rng.randbytes(1000))
                elif op == "truncate":
                    os.truncate(a, rng.randrange(5000))
                elif op == "rename":
                    os.rename(a, b)
                else:
                    a.unlink()
                self._count(ops=1)
            except FileNotFoundError:
                pass  # another writer renamed or unlinked it first
            except OSError as err:
                self.errors.append(f"{op} {a.name}: {err}")
                time.sleep(0.1)

    def _read(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                with (self.mnt / f"f{rng.randrange(FILES)}").open("rb") as f:
                    f.read(65536)
                self._count(opens=1)
            except FileNotFoundError:
                pass
            except OSError as err:
                self.errors.append(f"read: {err}")
                time.sleep(0.1)


def soak(minutes: float, interval: float, period: float, seed: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="vfile-soak-"))
    src, mnt, state = root / "src", root / "mnt", root / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(root / "vfile.toml", fail_mode="safe", deadline=0.5)
    samples: list[dict[str, Any]] = []
    events: list[str] = []
    rng = random.Random(seed)
    with running_appliance() as app, running_proxy(app.url) as proxy, \
            mounted(src, mnt, "--appliance", proxy.url, "--config", str(cfg),
                    "--state-dir", str(state)) as server:
        pid = server.proc.pid
        work = Workload(mnt, writers=3, readers=2, seed=seed)
        started = time.monotonic()
        end = started + minutes * 60
        next_event = started + period / 2
        event_end: float | None = None
        kind = ""
        work.start()
        try:
            while time.monotonic() < end:
                now = time.monotonic()
                if event_end is not None and now >= event_end:
                    if kind == "window":
                        control.call(mnt, "resume", {}, timeout=20)
                    else:
                        proxy.set_fault("none")
                    event_end = None
                elif event_end is None and now >= next_event:
                    if len(events) % 2:
                        kind = "window"
                        control.call(mnt, "quiesce", {"max": period}, timeout=20)
                    else:
                        kind = rng.choice(FAULTS)
                        proxy.set_fault(kind)
                    events.append(kind)
                    event_end = now + period / 3
                    next_event = now + period
                rss, fds = proc_sample(pid)
                st = status(mnt)
                samples.append({"t": round(now - started, 2), "rss_kib": rss, "fds": fds,
                                "journal": st["journal"]["deferred"],
                                "event": kind if event_end is not None else ""})
                time.sleep(interval)
        finally:
            work.join()
        proxy.set_fault("none")
        control.call(mnt, "resume", {}, timeout=20)
        deadline = time.monotonic() + DRAIN_GRACE
        while status(mnt)["journal"]["deferred"] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(interval)
        rss, fds = proc_sample(pid)
        st = status(mnt)
        samples.append({"t": round(time.monotonic() - started, 2), "rss_kib": rss, "fds": fds,
                        "journal": st["journal"]["deferred"], "event": "settled"})
        sig = st["appliances"][0]["sig_version"] or signature_version(state)
    lost = unaccounted(src, state, sig)
    files = sum(1 for _ in src.iterdir())
    shutil.rmtree(root, ignore_errors=True)
    first = samples[0]
    return {
        "minutes": minutes, "ops": work.ops, "opens": work.opens,
        "outages": sum(e != "window" for e in events), "windows": events.count("window"),
        "events": events, "workload_errors": work.errors[:20],
        "fd_start": first["fds"], "fd_end": samples[-1]["fds"],
        "fd_max": max(s["fds"] for s in samples),
        "rss_start_kib": first["rss_kib"], "rss_end_kib": samples[-1]["rss_kib"],
        "rss_max_kib": max(s["rss_kib"] for s in samples),
        "journal_max": max(s["journal"] for s in samples),
        "journal_end": samples[-1]["journal"],
        "files": files, "lost": lost, "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0, help="sample period, seconds")
    parser.add_argument("--period", type=float, default=12.0,
                        help="seconds between outages/windows (each lasts a third of it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = soak(args.minutes, args.interval, args.period, args.seed)
    print(f"{'t(s)':>8} {'rss KiB':>9} {'fds':>5} {'journal':>8}  event")
    for s in result["samples"]:
        print(f"{s['t']:>8} {s['rss_kib']:>9} {s['fds']:>5} {s['journal']:>8}  {s['event']}")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
