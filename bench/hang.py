"""How fast the pool tells a hung appliance, and that a slow one is not taken for hung.

Used by bench/failmodes.py (its `detection` figures); runnable alone:

    .venv/bin/python bench/hang.py [--onsets N] [--no-clamd] [--json PATH]
    .venv/bin/python bench/hang.py --healthy SECONDS   # false breaker openings only
    .venv/bin/python bench/hang.py --tails SECONDS     # PING vs 4 KiB scan latency tails

For each appliance (vfile's built-in appliance as its own process, and a real
clamd behind `vfile appliance proxy`), a pool with the shipped defaults (1 s
attempt timeout, 1 retry, breaker after 3 failures; no health probes, so only
scans can tell) is driven by `WORKERS` concurrent scanners of a 4 KiB file,
each pausing `THINK` between scans like an opener. Timeline:

    quiet     the model learns; quiet p99 of a scan
    slow      a delay fault of 3x the model's 4 KiB estimate: breaker must stay closed
    recover   the fault cleared for RECOVER_S: the model relearns
    outage    a black hole: time from the fault to the breaker opening, scan p99/max
              after the fault, scans that waited more than 10x the quiet p99

Each appliance runs adaptive on and off (fixed attempt timeouts: the pool before
issue 16), side by side. One onset is one sample of a noisy figure: detection
takes one model timeout (the first blackholed scan times out, the others, late
too, are counted with it), and the timeout at that instant follows the recent
latencies. So the adaptive pool runs `--onsets` times (a fresh pool each time),
reporting the median and range of detection next to the timeout in force at
the fault, and the quiet phase's own tail (p99.9, max) and breaker openings
before any fault (false outages): no detector that waits on scans can be faster
than that tail without opening the breaker on a healthy appliance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import make_samples, running_clamd  # type: ignore[import-not-found]

from vfile.scanner.clamd import ClamdClient
from vfile.scanner.latency import Adaptive
from vfile.scanner.pool import Pool
from vfile.scanner.urls import parse_appliance_url
from vfile.simulate.harness import ApplianceProcess

WORKERS = 4
THINK = 0.002
QUIET_S = 1.5
SLOW_S = 1.0
RECOVER_S = 1.0
OUTAGE_S = 2.0
#: black-hole onsets per appliance with the adaptive pool (a fresh pool each)
ONSETS = 3


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


async def answering(url: str, path: str, deadline: float = 30.0) -> None:
    """Wait until the appliance answers a scan again (the fault switch is a signal:
    a pool started right after clearing a black hole would meet it still on)."""
    probe = Pool([url], attempt_timeout=0.5, retries=0, breaker_failures=1_000_000,
                 probe_interval=60.0, adaptive=Adaptive(enabled=False))
    with trio.fail_after(deadline):
        for _ in range(int(deadline / 0.05)):
            if (await probe.scan_path(path)).is_clean:
                return
            await trio.sleep(0.05)


async def drive(url: str, path: str, fault: ApplianceProcess, adaptive: bool) -> dict[str, Any]:
    await answering(url, path)
    pool = Pool([url], attempt_timeout=1.0, retries=1, breaker_failures=3,
                breaker_cooldown=60.0, probe_interval=60.0,
                adaptive=Adaptive(enabled=adaptive))
    scans: list[tuple[float, float, bool]] = []  # (start, latency, clean)
    phase_at: dict[str, float] = {}

    async def worker() -> None:
        while True:
            t = time.perf_counter()
            v = await pool.scan_path(path)
            scans.append((t, time.perf_counter() - t, v.is_clean))
            await trio.sleep(THINK)

    def between(a: str, b: str) -> list[tuple[float, float, bool]]:
        return [s for s in scans if phase_at[a] <= s[0] < phase_at[b]]

    async with trio.open_nursery() as nursery:
        for _ in range(WORKERS):
            nursery.start_soon(worker)
        phase_at["quiet"] = time.perf_counter()
        quiet_wall = time.time()
        await trio.sleep(QUIET_S)
        stats: dict[str, Any] = pool.statistics()[0]
        est = stats["adaptive"]["estimate_4KiB_ms"] or stats["p50_ms"]
        phase_at["slow"] = time.perf_counter()
        fault.set_fault(f"delay={3 * est:.2f}ms")
        await trio.sleep(SLOW_S)
        slow_stats: dict[str, Any] = pool.statistics()[0]
        fault.set_fault("none")
        await trio.sleep(RECOVER_S)  # the model relearns the normal latency
        at_fault: dict[str, Any] = pool.statistics()[0]
        phase_at["outage"] = time.perf_counter()
        fault_wall = time.time()
        fault.set_fault("blackhole")
        await trio.sleep(OUTAGE_S)
        phase_at["end"] = time.perf_counter()
        out_stats: dict[str, Any] = pool.statistics()[0]
        nursery.cancel_scope.cancel()
    fault.set_fault("none")
    quiet = [lat for _, lat, ok in between("quiet", "slow") if ok]
    slow = between("slow", "outage")
    during = [lat for _, lat, _ in between("outage", "end")]
    quiet_p99 = pct(quiet, 0.99)
    opened = next((t for t in out_stats["breaker_opened_times"] if t >= fault_wall), None)
    timeout_at_fault = at_fault["adaptive"]["timeout_4KiB_ms"]
    # openings while the 3x delay ran; the others before the fault (quiet and recover
    # phases) were false outages of a healthy appliance
    slow_opens = slow_stats["breaker_opens"] - stats["breaker_opens"]
    return {
        "adaptive": adaptive,
        "quiet_scans": len(quiet), "quiet_p50_ms": ms(pct(quiet, 0.5)),
        "quiet_p99_ms": ms(quiet_p99), "quiet_p999_ms": ms(pct(quiet, 0.999)),
        "quiet_max_ms": ms(max(quiet) if quiet else None),
        # breaker openings before any fault: false outages of a healthy appliance
        "quiet_breaker_opens": at_fault["breaker_opens"] - slow_opens,
        "estimate_4KiB_ms": est, "timeout_4KiB_ms": stats["adaptive"]["timeout_4KiB_ms"],
        "timeout_at_fault_ms": timeout_at_fault,
        "slow_delay_ms": round(3 * est, 2), "slow_scans": len(slow),
        "slow_errors": sum(1 for _, _, ok in slow if not ok),
        "slow_breaker": slow_stats["state"],
        "slow_breaker_opens": slow_opens,
        "detection_ms": None if opened is None else round((opened - fault_wall) * 1000, 1),
        "breaker_open_at_fault": at_fault["state"] != "closed",
        # when those false openings happened, seconds after the pool's first scan
        "false_opens_at_s": [round(t - quiet_wall, 3) for t in at_fault["breaker_opened_times"]],
        "outage_scans": len(during), "outage_p99_ms": ms(pct(during, 0.99)),
        "outage_max_ms": ms(max(during) if during else None),
        "outage_waited_10x_quiet_p99": sum(1 for d in during
                                           if quiet_p99 is not None and d > 10 * quiet_p99),
        "evicted": out_stats["adaptive"]["evicted"],
        # liveness probes (scanner/liveness.py): sent, unanswered, scans let wait on an
        # answer, the last probe deadline in force before the fault
        "probes": out_stats["adaptive"].get("probes"),
        "probes_unanswered": out_stats["adaptive"].get("probes_unanswered"),
        "extended": out_stats["adaptive"].get("extended"),
        "probe_deadline_at_fault_ms": at_fault["adaptive"].get("probe_deadline_ms"),
        # what the probe deadline is made of: the slowest recent pause, the scans' and
        # the probes' own, and the probes' fit
        "pause_at_fault_ms": (at_fault["adaptive"]["peak_ms"],
                              at_fault["adaptive"].get("probe_peak_ms"),
                              at_fault["adaptive"].get("probe_estimate_ms")),
    }


async def healthy(url: str, path: str, seconds: float) -> dict[str, Any]:
    """`WORKERS` scanners on a healthy appliance for `seconds`: every breaker opening is
    a false outage. A short cooldown, so the count goes on after one."""
    pool = Pool([url], attempt_timeout=1.0, retries=1, breaker_failures=3,
                breaker_cooldown=0.2, probe_interval=60.0)
    scans = 0

    async def worker() -> None:
        nonlocal scans
        while True:
            await pool.scan_path(path)
            scans += 1
            await trio.sleep(THINK)

    await answering(url, path)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(worker)
    stats: dict[str, Any] = pool.statistics()[0]
    return {"seconds": seconds, "scans": scans, "false_breaker_opens": stats["breaker_opens"],
            "timeout_4KiB_ms": stats["adaptive"]["timeout_4KiB_ms"],
            "load_average": round(os.getloadavg()[0], 1)}


async def tails(url: str, path: str, seconds: float) -> dict[str, Any]:
    """`WORKERS` scanners of a 4 KiB file and one PING every 5 ms on fresh connections,
    side by side: the scans' latency tail against the liveness probe's."""
    client = ClamdClient(parse_appliance_url(url))
    pinger = ClamdClient(parse_appliance_url(url))
    scans: list[float] = []
    pings: list[float] = []

    async def scanner() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                t = time.perf_counter()
                await client.scan_fd(fd, size=4096)
                scans.append(time.perf_counter() - t)
                await trio.sleep(THINK)
        finally:
            os.close(fd)

    async def ping() -> None:
        while True:
            t = time.perf_counter()
            await pinger.ping()
            pings.append(time.perf_counter() - t)
            await trio.sleep(0.005)

    await answering(url, path)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(scanner)
            nursery.start_soon(ping)
    return {name: {"n": len(v), "p50_ms": ms(pct(v, 0.5)), "p99_ms": ms(pct(v, 0.99)),
                   "p999_ms": ms(pct(v, 0.999)), "max_ms": ms(max(v) if v else None)}
            for name, v in (("scan", scans), ("ping", pings))} | {
                "load_average": round(os.getloadavg()[0], 1)}


def summarize_onsets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several onsets of one appliance and pool: the first run's figures, detection and
    the timeout at the fault as median and range, false openings summed."""
    det = [r["detection_ms"] for r in runs if r["detection_ms"] is not None]
    tmo = [r["timeout_at_fault_ms"] for r in runs if r["timeout_at_fault_ms"] is not None]
    out = dict(runs[0])
    out.update({
        "onsets": len(runs),
        "detection_ms": round(statistics.median(det), 1) if det else None,
        "detections_ms": [r["detection_ms"] for r in runs],
        "timeouts_at_fault_ms": [r["timeout_at_fault_ms"] for r in runs],
        "timeout_at_fault_ms": round(statistics.median(tmo), 1) if tmo else None,
        "quiet_p99_ms": max((r["quiet_p99_ms"] for r in runs if r["quiet_p99_ms"] is not None),
                            default=None),
        "quiet_p999_ms": max((r["quiet_p999_ms"] for r in runs
                              if r["quiet_p999_ms"] is not None), default=None),
        "quiet_max_ms": max((r["quiet_max_ms"] for r in runs if r["quiet_max_ms"] is not None),
                            default=None),
        "quiet_breaker_opens": sum(r["quiet_breaker_opens"] for r in runs),
        "false_opens_at_s": [r["false_opens_at_s"] for r in runs],
        "slow_errors": sum(r["slow_errors"] for r in runs),
        "slow_breaker_opens": sum(r["slow_breaker_opens"] for r in runs),
        "outage_scans": sum(r["outage_scans"] for r in runs),
        "outage_waited_10x_quiet_p99": sum(r["outage_waited_10x_quiet_p99"] for r in runs),
        "probe_deadlines_at_fault_ms": [r["probe_deadline_at_fault_ms"] for r in runs],
        "pauses_at_fault_ms": [r["pause_at_fault_ms"] for r in runs],
        "outage_max_ms": max((r["outage_max_ms"] for r in runs if r["outage_max_ms"] is not None),
                             default=None),
        "load_average": round(os.getloadavg()[0], 1),
    })
    return out


def measure(keep_clamd: bool = True, onsets: int = ONSETS, healthy_s: float = 0.0,
            tails_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """Both appliances, adaptive on (`onsets` times) and off: {"builtin/adaptive": {...}}.
    `healthy_s` > 0: only false breaker openings on each healthy appliance, adaptive on,
    over that many seconds: {"builtin/healthy": {...}}."""
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vfile-hang-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        samples = make_samples(root / "samples")
        path = root / "small.bin"
        path.write_bytes(os.urandom(4096))
        targets = {"builtin": "builtin"}
        if keep_clamd:
            clamd = stack.enter_context(running_clamd(root / "clamd", samples.sigdir))
            targets["clamd"] = f"clamd://{clamd.socket_path}"
        for name, target in targets.items():
            work = root / f"run-{name}"
            work.mkdir()
            sigs = samples.sigdir if target == "builtin" else None
            with ApplianceProcess(work, target, sigs) as appliance:
                if tails_s > 0:
                    print(f"tails: {name} for {tails_s:g}s ...", file=sys.stderr)
                    out[f"{name}/tails"] = trio.run(tails, appliance.url, str(path), tails_s)
                    continue
                if healthy_s > 0:
                    print(f"healthy: {name} for {healthy_s:g}s ...", file=sys.stderr)
                    out[f"{name}/healthy"] = trio.run(healthy, appliance.url, str(path),
                                                      healthy_s)
                    continue
                for adaptive in (True, False):
                    key = f"{name}/{'adaptive' if adaptive else 'fixed'}"
                    runs = []
                    for i in range(onsets if adaptive else 1):
                        print(f"detection: {key} ({i + 1}) ...", file=sys.stderr)
                        runs.append(trio.run(drive, appliance.url, str(path), appliance,
                                             adaptive))
                    out[key] = summarize_onsets(runs)
    return out


def _range(values: list[Any]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{min(known):g}-{max(known):g}" if len(known) > 1 else f"{known[0]:g}"


def render(rows: dict[str, dict[str, Any]]) -> str:
    head = ("appliance/pool", "quiet p99 / p99.9 / max ms", "quiet breaker opens",
            "timeout at fault ms", "detect ms (median, range)", "3x-delay: errors / opens",
            "outage max ms", ">10x quiet p99", "probe deadline at fault ms")
    body = [(k, f"{r['quiet_p99_ms']} / {r['quiet_p999_ms']} / {r['quiet_max_ms']}",
             str(r["quiet_breaker_opens"]),
             _range(r.get("timeouts_at_fault_ms", [r["timeout_at_fault_ms"]])),
             f"{r['detection_ms']} ({_range(r.get('detections_ms', [r['detection_ms']]))})",
             f"{r['slow_errors']} / {r['slow_breaker_opens']}",
             str(r["outage_max_ms"]),
             f"{r['outage_waited_10x_quiet_p99']}/{r['outage_scans']}",
             _range(r.get("probe_deadlines_at_fault_ms", [r["probe_deadline_at_fault_ms"]])))
            for k, r in rows.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
                     for line in (head, *body))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-clamd", action="store_true", help="only the built-in appliance")
    ap.add_argument("--onsets", type=int, default=ONSETS,
                    help=f"black-hole onsets per appliance, adaptive pool (default {ONSETS})")
    ap.add_argument("--healthy", type=float, default=0.0, metavar="SECONDS",
                    help="instead: count false breaker openings on each healthy appliance")
    ap.add_argument("--tails", type=float, default=0.0, metavar="SECONDS",
                    help="instead: PING vs 4 KiB scan latency on each healthy appliance")
    args = ap.parse_args(argv)
    rows = measure(keep_clamd=not args.no_clamd, onsets=max(1, args.onsets),
                   healthy_s=args.healthy, tails_s=args.tails)
    if args.tails > 0:
        pass  # the JSON below says it all
    elif args.healthy > 0:
        for key, r in rows.items():
            print(f"{key}: {r['false_breaker_opens']} false breaker openings in "
                  f"{r['seconds']:g}s ({r['scans']} scans; load average {r['load_average']})")
    else:
        print(render(rows))
    print(json.dumps(rows, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
