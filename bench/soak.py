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

Memory (issue 19): the server runs with ``VFILE_TRACEMALLOC`` (``--trace-frames``,
0 turns tracing off), every sample also records RssAnon (the heap: what a
leak grows) and the Python heap tracemalloc sees. Once `--warmup` of the run
has passed (default: the first half) the soak takes a tracemalloc baseline in
the server; the report gives the least-squares slope of RSS and RssAnon over
the rest of the run, in KiB per minute and per 10,000 opens, the growth of the
live Python heap from the baseline to the end (both measured after a full
collection; the per-sample `traced` column also counts garbage not yet
collected), and the allocation sites and object types that grew most.

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


def proc_sample(pid: int) -> dict[str, int]:
    """RSS, RssAnon, RssFile (KiB) and open descriptors of process `pid`."""
    out = {"rss_kib": 0, "anon_kib": 0, "file_kib": 0}
    names = {"VmRSS": "rss_kib", "RssAnon": "anon_kib", "RssFile": "file_kib"}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in names:
                out[names[key]] = int(rest.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than 3 points)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def memory_slopes(samples: list[dict[str, Any]], since: float) -> dict[str, Any]:
    """Slopes of the memory figures over the samples taken at or after `since` seconds:
    KiB per minute, and KiB per 10,000 reader opens and per 10,000 operations (opens
    and writer ops) at the rates of that stretch."""
    warm = [s for s in samples if s["t"] >= since and s["event"] != "settled"]
    out: dict[str, Any] = {"since_s": since, "samples": len(warm)}
    if len(warm) < 3:
        return out
    minutes = (warm[-1]["t"] - warm[0]["t"]) / 60
    opens = warm[-1]["opens"] - warm[0]["opens"]
    operations = opens + warm[-1]["ops"] - warm[0]["ops"]
    out["opens"] = opens
    out["operations"] = operations
    out["opens_per_min"] = round(opens / minutes) if minutes else None
    ts = [s["t"] / 60 for s in warm]
    for key in ("rss_kib", "anon_kib"):
        if any(s.get(key) is None for s in warm):
            continue
        per_min = slope(ts, [float(s[key]) for s in warm])
        if per_min is None:
            continue
        name = key.removesuffix("_kib")
        out[f"{name}_kib_per_min"] = round(per_min, 1)
        out[f"{name}_kib_per_10k_opens"] = \
            round(per_min * minutes / opens * 10_000, 1) if opens else None
        out[f"{name}_kib_per_10k_operations"] = \
            round(per_min * minutes / operations * 10_000, 1) if operations else None
    return out


def live_heap_growth(warm: dict[str, Any], final: dict[str, Any], opens: int,
                     ops: int) -> dict[str, Any]:
    """Growth of the live Python heap between two `memory` reports (each taken after a
    full collection, so cyclic garbage awaiting the collector does not count), per
    minute, per 10,000 reader opens and per 10,000 operations (opens and writer ops:
    a leak per write shows in the latter whatever the mix)."""
    if warm.get("traced_kib") is None or final.get("traced_kib") is None:
        return {}
    kib = final["traced_kib"] - warm["traced_kib"]
    minutes = (final["t"] - warm["t"]) / 60
    return {"live_heap_warm_kib": warm["traced_kib"], "live_heap_end_kib": final["traced_kib"],
            "live_heap_kib_per_min": round(kib / minutes, 1) if minutes > 0 else None,
            "live_heap_kib_per_10k_opens": round(kib / opens * 10_000, 1) if opens else None,
            "live_heap_kib_per_10k_operations":
                round(kib / (opens + ops) * 10_000, 1) if opens + ops else None}


def memory(mnt: Path, **args: Any) -> dict[str, Any]:
    """The server's `memory` control command (vfile.observe.memwatch)."""
    result: dict[str, Any] = control.call(mnt, "memory", args, timeout=60)
    return result


class Workload:
    """Writer and reader threads over FILES names; stop() and join()."""

    def __init__(self, mnt: Path, writers: int, readers: int, seed: int) -> None:
        self.mnt = mnt
        self.stop = threading.Event()
        self.ops = 0
        self.opens = 0
        self.errors: list[str] = []
        #: (st_dev, st_ino) of every file a reader opened: the distinct files the
        #: server got to know (writers create new inodes under the same 40 names)
        self.files_seen: set[tuple[int, int]] = set()
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
                    st = os.fstat(f.fileno())
                self._count(opens=1)
                self.files_seen.add((st.st_dev, st.st_ino))
            except FileNotFoundError:
                pass
            except OSError as err:
                self.errors.append(f"read: {err}")
                time.sleep(0.1)


def soak(minutes: float, interval: float, period: float, seed: int, *,
         warmup: float = 0.5, trace_frames: int = 1, top: int = 15) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="vfile-soak-"))
    src, mnt, state = root / "src", root / "mnt", root / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(root / "vfile.toml", fail_mode="safe", deadline=0.5)
    samples: list[dict[str, Any]] = []
    events: list[str] = []
    rng = random.Random(seed)
    env = {"VFILE_TRACEMALLOC": str(trace_frames)}
    baseline: dict[str, Any] = {}
    with running_appliance() as app, running_proxy(app.url) as proxy, \
            mounted(src, mnt, "--appliance", proxy.url, "--config", str(cfg),
                    "--state-dir", str(state), env=env) as server:
        pid = server.proc.pid
        work = Workload(mnt, writers=3, readers=2, seed=seed)
        started = time.monotonic()
        end = started + minutes * 60
        warm_at = started + warmup * minutes * 60
        next_event = started + period / 2
        event_end: float | None = None
        kind = ""
        work.start()

        def sample(now: float, event: str) -> None:
            st = status(mnt)
            traced = memory(mnt, top=0).get("traced_kib") if trace_frames else None
            samples.append({"t": round(now - started, 2), **proc_sample(pid),
                            "traced_kib": traced, "opens": work.opens, "ops": work.ops,
                            "journal": st["journal"]["deferred"], "event": event})

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
                if not baseline and now >= warm_at:
                    baseline = memory(mnt, top=0, baseline=True, types=True)
                    baseline.update(t=round(now - started, 2), opens=work.opens, ops=work.ops)
                sample(now, kind if event_end is not None else "")
                time.sleep(interval)
        finally:
            work.join()
        proxy.set_fault("none")
        control.call(mnt, "resume", {}, timeout=20)
        deadline = time.monotonic() + DRAIN_GRACE
        while status(mnt)["journal"]["deferred"] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(interval)
        sample(time.monotonic(), "settled")
        final = memory(mnt, top=top, types=True, garbage=True)
        final["t"] = round(time.monotonic() - started, 2)
        st = status(mnt)
        sig = st["appliances"][0]["sig_version"] or signature_version(state)
        gate = st["gate"]
    lost = unaccounted(src, state, sig)
    files = sum(1 for _ in src.iterdir())
    shutil.rmtree(root, ignore_errors=True)
    first, last = samples[0], samples[-1]
    return {
        "minutes": minutes, "ops": work.ops, "opens": work.opens,
        "outages": sum(e != "window" for e in events), "windows": events.count("window"),
        "events": events, "workload_errors": work.errors[:20],
        "fd_start": first["fds"], "fd_end": last["fds"],
        "fd_max": max(s["fds"] for s in samples),
        "rss_start_kib": first["rss_kib"], "rss_end_kib": last["rss_kib"],
        "rss_max_kib": max(s["rss_kib"] for s in samples),
        "anon_start_kib": first["anon_kib"], "anon_end_kib": last["anon_kib"],
        "journal_max": max(s["journal"] for s in samples),
        "journal_end": last["journal"],
        "files": files, "distinct_files_opened": len(work.files_seen), "lost": lost,
        "cached_verdicts": gate.get("cached_verdicts"),
        "memory": {
            "slopes": {**memory_slopes(samples, baseline.get("t", first["t"])),
                       **live_heap_growth(baseline, final, work.opens - baseline.get("opens", 0),
                                          work.ops - baseline.get("ops", 0))},
            "traced_end_kib": final.get("traced_kib"),
            "traced_peak_kib": final.get("traced_peak_kib"),
            "gc_objects_warm": baseline.get("gc_objects"), "gc_objects_end": final["gc_objects"],
            "growth_since_warm": final.get("growth", []),
            "types_growth_since_warm": final.get("types_growth", {}),
            "top_sites": final.get("top", []),
            "garbage_at_end": final.get("garbage", {}),
        },
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0, help="sample period, seconds")
    parser.add_argument("--period", type=float, default=12.0,
                        help="seconds between outages/windows (each lasts a third of it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="fraction of the run before memory slopes are measured")
    parser.add_argument("--trace-frames", type=int, default=1,
                        help="tracemalloc frames per allocation in the server (0: off)")
    parser.add_argument("--top", type=int, default=15, help="allocation sites to report")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = soak(args.minutes, args.interval, args.period, args.seed, warmup=args.warmup,
                  trace_frames=args.trace_frames, top=args.top)
    print(f"{'t(s)':>8} {'rss KiB':>9} {'anon KiB':>9} {'traced':>8} {'fds':>5} "
          f"{'opens':>8} {'journal':>8}  event")
    step = max(1, len(result["samples"]) // 60)  # a long run prints every n-th sample
    for i, s in enumerate(result["samples"]):
        if i % step and i != len(result["samples"]) - 1:
            continue
        print(f"{s['t']:>8} {s['rss_kib']:>9} {s['anon_kib']:>9} {s['traced_kib'] or '-':>8} "
              f"{s['fds']:>5} {s['opens']:>8} {s['journal']:>8}  {s['event']}")
    mem = result["memory"]
    print("\ntop allocation sites at the end (tracemalloc):")
    for site in mem["top_sites"]:
        print(f"  {site['kib']:>10.1f} KiB {site['blocks']:>8} blocks  {site['where']}")
    print("grown since warm:")
    for site in mem["growth_since_warm"]:
        print(f"  {site['kib']:>+10.1f} KiB {site['blocks']:>+8} blocks  {site['where']}")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
