"""Open/close latency of each fail mode while the scan appliance is down, side by side.

    .venv/bin/python bench/failmodes.py [--quick] [--json PATH] [--modes safe,...] [--logs DIR]

The same machinery as `vfile simulate migration` (real `vfile mount` per mode,
the built-in appliance black-holed by its fault switch, readers, writers and
an indexer doing real syscalls through the mount, a migration window), on a
smaller guest and without the plots. One run measures every mode: legacy (a
hypervisor-style fail-closed filter: long timeouts, retries, no breaker, no
window), then vfile's closed, open and safe.

Printed: a table. JSON (stdout's last block, and --json PATH): per mode
`p50_ms`, `p99_ms`, `max_ms` (open() latency during the outage),
`availability` (% of opens of clean files that succeeded, whole run),
`availability_during_outage`, `unscanned_after_drain`, `quiesce_ms`,
`blocked_in_open_s` and `coverage_s`. --quick scales every timeout by 0.25.

Hung-appliance detection (issue 16), same run: per mode `quiet_p99_ms` (opens
before the outage), `outage_over_quiet_p99` (p99 during / quiet p99),
`waited_10x_quiet_p99` (opens during the outage slower than 10x the quiet p99),
`detection_ms` (from the fault to the breaker opening); `ratios.legacy_over_safe_p99`;
`host_fsync_during_outage` (the host's fsync latency at the same time, a 4 KiB
fdatasync every 20 ms next to the state directories: the floor of a rewrite's close);
what the outage p99 is made of: `outage_read_p99_ms` and `outage_write_p99_ms`
(opens for reading / for writing; an open for writing commits its intent in every
mode, outage or not) and `slowest` (the slowest opens during the outage: ms after
the fault, actor, write); the writers' cycle, quiet and during the outage:
`{quiet,outage}_writer_{open,write,close}_p99_ms` and `outage_writer_close_max_ms`
(the intent's fsync is awaited before the first WRITE, which the writeback cache
sends at close: the wait moved from the open to the close);
and `detection` (bench/hang.py: the pool alone against the built-in appliance
and a real clamd, adaptive on and off: time to detection for 4 KiB scans, and a
delay fault at 3x the model's estimate that must open no breaker).
`--no-detection` skips that part, `--no-clamd` its clamd half.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: the repository root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hang
from vfile.simulate.report import summarize, text_table
from vfile.simulate.run import ModeResult, run_migration
from vfile.simulate.scenario import make_params


def detection_figures(r: ModeResult, s: dict[str, Any]) -> dict[str, Any]:
    """Quiet p99, opens that waited > 10x it during the outage, fault -> breaker open."""
    quiet_p99 = s["latency"]["open"]["before"]["p99_ms"]
    during_p99 = s["latency"]["open"]["during"]["p99_ms"]
    start = r.events.get("outage_start")
    end = r.events.get("outage_end")
    waited = None
    if quiet_p99 is not None and start is not None and end is not None:
        waited = sum(1 for op in r.ops if op.kind == "open" and op.actor != "user"
                     and start <= op.t < end and op.latency * 1000 > 10 * quiet_p99)
    detection = None
    opened: list[float] = r.extra.get("breaker_opened_walls", [])
    false_opens = None
    if start is not None and end is not None:
        fault_wall, back_wall = r.extra["wall_t0"] + start, r.extra["wall_t0"] + end
        first = next((t for t in opened if t >= fault_wall), None)
        detection = None if first is None else round((first - fault_wall) * 1000, 1)
        # an opening outside the outage is a false outage
        false_opens = sum(1 for t in opened if not fault_wall <= t < back_wall)
    return {"quiet_p99_ms": quiet_p99,
            "outage_over_quiet_p99": None if not quiet_p99 or during_p99 is None
            else round(during_p99 / quiet_p99, 1),
            "waited_10x_quiet_p99": waited, "detection_ms": detection,
            "breaker_opens": r.extra.get("breaker_opens"), "false_opens": false_opens}


def _p99_ms(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1)


def outage_breakdown(r: ModeResult) -> dict[str, Any]:
    """What the p99 during the outage is made of: reads and writes apart, the slowest."""
    start, end = r.events.get("outage_start"), r.events.get("outage_end")
    if start is None or end is None:
        return {}
    during = [op for op in r.ops if op.kind == "open" and op.actor != "user"
              and start <= op.t < end]
    slowest = sorted(during, key=lambda op: -op.latency)[:5]
    return {
        "outage_read_p99_ms": _p99_ms([op.latency for op in during if not op.write]),
        "outage_write_p99_ms": _p99_ms([op.latency for op in during if op.write]),
        "outage_write_opens": sum(op.write for op in during),
        "slowest": [{"after_fault_ms": round((op.t - start) * 1000, 1),
                     "ms": round(op.latency * 1000, 1), "actor": op.actor, "write": op.write}
                    for op in slowest]}


def writer_figures(r: ModeResult) -> dict[str, Any]:
    """The writers' whole cycle, quiet (before the outage) and during it: p99 of the
    write-open, the pwrite and the close. An existing file's intent is fsynced before
    its first WRITE, not in its open; with the writeback cache that WRITE reaches the
    server at close, so the wait moved from the open to the close: shown, not hidden."""
    start, end = r.events.get("outage_start"), r.events.get("outage_end")
    if start is None or end is None:
        return {}
    out: dict[str, Any] = {}
    for phase, inside in (("quiet", lambda t: t < start), ("outage", lambda t: start <= t < end)):
        for kind in ("open", "write", "close"):
            got = [op.latency for op in r.ops if op.kind == kind and op.write
                   and op.actor.startswith("writer") and inside(op.t)]
            out[f"{phase}_writer_{kind}_p99_ms"] = _p99_ms(got)
            if phase == "outage" and kind == "close":
                out["outage_writer_close_max_ms"] = round(max(got) * 1000, 1) if got else None
    closes = sorted((op for op in r.ops if op.kind == "close" and op.write),
                    key=lambda op: -op.latency)
    out["slowest_writer_closes"] = [{"t_s": round(op.t, 2), "ms": round(op.latency * 1000, 1),
                                     "phase": "quiet" if op.t < start else "outage"
                                     if op.t < end else "after"} for op in closes[:5]]
    return out


class FsyncProbe:
    """The host's fsync latency alongside the run: a 4 KiB overwrite and fdatasync of a
    file next to the state directories (the same file system) every `PERIOD` s.
    A rewrite's first WRITE (at its close, with the writeback cache) waits for one
    fsync of the journal (its intent), so this is the floor of the writers' closes."""

    PERIOD = 0.02

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (wall time, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)

    def __enter__(self) -> FsyncProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        fd, name = tempfile.mkstemp(prefix="vfile-fsync-probe-")
        try:
            block = os.urandom(4096)
            while not self._stop.wait(self.PERIOD):
                t = time.perf_counter()
                os.pwrite(fd, block, 0)
                os.fdatasync(fd)
                self.samples.append((time.time(), time.perf_counter() - t))
        finally:
            os.close(fd)
            os.unlink(name)

    def during(self, r: ModeResult) -> dict[str, Any]:
        """fsync latency during `r`'s outage: n, p50, p99, max (ms)."""
        start, end = r.events.get("outage_start"), r.events.get("outage_end")
        if start is None or end is None:
            return {}
        t0 = r.extra["wall_t0"]
        got = sorted(d for w, d in self.samples if t0 + start <= w < t0 + end)
        if not got:
            return {}
        return {"n": len(got), "p50_ms": round(got[len(got) // 2] * 1000, 1),
                "p99_ms": _p99_ms(got), "max_ms": round(got[-1] * 1000, 1)}


def bench_row(s: dict[str, Any]) -> dict[str, Any]:
    lat = s["latency"]["open"]["during"]
    quiesce = s["quiesce"].get("total_s")
    return {
        "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"],
        "opens_during_outage": lat["n"],
        "availability": s["availability"]["all"]["percent"],
        "availability_during_outage": s["availability"]["during"]["percent"],
        "unscanned_after_drain": s["unscanned_after_drain"],
        "quiesce_ms": None if quiesce is None else round(quiesce * 1000, 1),
        "blocked_in_open_s": s["blocked_in_open_s"],
        "coverage_s": s["coverage_s"],
        "infected_caught": f"{s['infected_caught']}/{s['infected_total']}",
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render(rows: dict[str, dict[str, Any]]) -> str:
    head = ("mode", "p50 ms", "p99 ms", "max ms", "avail %", "avail % outage",
            "unscanned", "quiesce ms", "blocked s")
    body = [(mode, _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["max_ms"]),
             _ms(r["availability"]), _ms(r["availability_during_outage"]),
             str(r["unscanned_after_drain"]), _ms(r["quiesce_ms"]),
             f"{r['blocked_in_open_s']:.2f}") for mode, r in rows.items()]
    head2 = ("mode", "quiet p99 ms", "outage p99 / quiet p99", "opens > 10x quiet p99",
             "fault -> breaker open ms", "breaker opens (outside the outage)")
    body2 = [(mode, _ms(r["quiet_p99_ms"]), str(r["outage_over_quiet_p99"]),
              str(r["waited_10x_quiet_p99"]), _ms(r["detection_ms"]),
              f"{r['breaker_opens']} ({r['false_opens']})")
             for mode, r in rows.items()]
    head3 = ("mode", "outage p99 ms: reads", "writes", "write opens",
             "host fsync p50 / p99 / max ms", "slowest open: ms after the fault, ms, actor")
    body3 = [(mode, _ms(r.get("outage_read_p99_ms")), _ms(r.get("outage_write_p99_ms")),
              str(r.get("outage_write_opens")),
              " / ".join(_ms(r.get("host_fsync_during_outage", {}).get(k))
                         for k in ("p50_ms", "p99_ms", "max_ms")),
              "; ".join(f"+{x['after_fault_ms']:.0f}: {x['ms']:.0f} {x['actor']}"
                        f"{' (w)' if x['write'] else ''}" for x in r.get("slowest", [])[:3]))
             for mode, r in rows.items()]
    head4 = ("mode", "writers p99 ms, quiet: open", "write", "close",
             "outage: open", "write", "close", "close max")
    body4 = [(mode, *(_ms(r.get(f"{ph}_writer_{k}_p99_ms")) for ph in ("quiet", "outage")
                      for k in ("open", "write", "close")),
              _ms(r.get("outage_writer_close_max_ms"))) for mode, r in rows.items()]
    return (text_table(head, body) + "\n\n" + text_table(head2, body2) + "\n\n"
            + text_table(head3, body3) + "\n\n" + text_table(head4, body4))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="60 files, a 3 s outage, every timeout x0.25 (about 40 s)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-detection", action="store_true",
                    help="skip the pool-alone hang detection figures (bench/hang.py)")
    ap.add_argument("--no-clamd", action="store_true",
                    help="hang detection against the built-in appliance only")
    ap.add_argument("--modes", help="a comma-separated subset of legacy,closed,open,safe "
                    "(default: all; the legacy / safe ratio needs both)")
    ap.add_argument("--logs", type=Path, help="keep each mode's mount server log here")
    args = ap.parse_args(argv)
    if args.quick:
        params = make_params(files=60, outage="2:3", window="2.5:1.5", after=1.5, quick=True,
                             modes=args.modes)
    else:
        # vfile's shipped timeouts against legacy's 5 s x 3 attempts
        params = make_params(files=120, outage="3:6", window="4:3", after=3.0,
                             drain_timeout=60, modes=args.modes)
    with FsyncProbe() as fsyncs:
        results = run_migration(params, logs_to=args.logs,
                                progress=lambda msg: print(msg, file=sys.stderr))
    rows = {}
    for r in results:
        s = summarize(r, params)
        rows[r.mode] = {**bench_row(s), **detection_figures(r, s), **outage_breakdown(r),
                        **writer_figures(r),
                        "host_fsync_during_outage": fsyncs.during(r)}
    legacy, safe = rows.get("legacy", {}).get("p99_ms"), rows.get("safe", {}).get("p99_ms")
    load = os.getloadavg()
    doc: dict[str, Any] = {
        "params": {"files": params.files, "outage": str(params.outage),
                   "window": str(params.window), "fault": params.fault,
                   "scale": params.scale, "quick": params.quick},
        "modes": rows,
        "load_average": [round(x, 1) for x in load],
        "ratios": {"legacy_over_safe_p99": round(legacy / safe, 1) if legacy and safe
                   else None}}
    if not args.no_detection:
        doc["detection"] = hang.measure(keep_clamd=not args.no_clamd)
    print(render(rows))
    print(f"\nlegacy / safe p99 during the outage: {doc['ratios']['legacy_over_safe_p99']}"
          f" (load average {doc['load_average'][0]} at the end)")
    if "detection" in doc:
        print("\nhang detection, the pool alone (bench/hang.py; 4 KiB scans):")
        print(hang.render(doc["detection"]))
    print(json.dumps(doc, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
