"""Open/close latency of each fail mode while the scan appliance is down, side by side.

    .venv/bin/python bench/failmodes.py [--quick] [--json PATH]

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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: the repository root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vfile.simulate.report import summarize, text_table
from vfile.simulate.run import run_migration
from vfile.simulate.scenario import make_params


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
    return text_table(head, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="60 files, a 3 s outage, every timeout x0.25 (about 40 s)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        params = make_params(files=60, outage="2:3", window="2.5:1.5", after=1.5, quick=True)
    else:
        # vfile's shipped timeouts against legacy's 5 s x 3 attempts
        params = make_params(files=120, outage="3:6", window="4:3", after=3.0,
                             drain_timeout=60)
    results = run_migration(params, progress=lambda msg: print(msg, file=sys.stderr))
    rows = {r.mode: bench_row(summarize(r, params)) for r in results}
    doc = {"params": {"files": params.files, "outage": str(params.outage),
                      "window": str(params.window), "fault": params.fault,
                      "scale": params.scale, "quick": params.quick},
           "modes": rows}
    print(render(rows))
    print(json.dumps(doc, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
