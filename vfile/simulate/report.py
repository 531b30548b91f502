"""From `ModeResult`s to numbers, report.json, report.md and the summary table.

`summarize(result, params)` is pure: latency percentiles per phase (before,
during and after the outage), availability, the quiesce, exposure, infected
files and coverage of one mode, as a JSON-able dict. `write_report` writes
report.json, report.md and (via vfile.simulate.plot) one PNG per mode.

Definitions (also printed in report.md):
- latency: of the open() and close() syscalls made by the workload (readers,
  indexer, writers, the migration's flush); the user's `cat`/`cp` runs are
  left out (they time a whole process).
- availability: opens that succeeded / opens attempted, over files that are
  not infected (denying an infected file is the right answer, not an outage).
- unscanned after drain: files opened during the outage that have, at the
  end, no verdict for their current content and were not quarantined.
- coverage: from the appliance's return until no journal entry made before
  its return is left.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vfile.simulate.run import ModeResult
from vfile.simulate.scenario import Params

PHASES = ("before", "during", "after")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of `values`; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_stats(latencies: Sequence[float]) -> dict[str, Any]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {"n": len(latencies), "p50_ms": ms(percentile(latencies, 0.50)),
            "p99_ms": ms(percentile(latencies, 0.99)),
            "max_ms": ms(max(latencies) if latencies else None)}


def _phase(t: float, start: float, end: float) -> str:
    return "before" if t < start else "during" if t < end else "after"


def _availability(ops: Iterable[Any]) -> dict[str, Any]:
    ops = list(ops)
    ok = sum(op.ok for op in ops)
    return {"opens": len(ops), "ok": ok,
            "percent": round(100.0 * ok / len(ops), 2) if ops else None}


def summarize(r: ModeResult, params: Params) -> dict[str, Any]:
    start = r.events.get("outage_start", params.outage.start)
    end = r.events.get("outage_end", params.outage.end)
    timed = [op for op in r.ops if op.actor != "user"]
    latency: dict[str, dict[str, Any]] = {}
    for kind in ("open", "close"):
        latency[kind] = {
            ph: latency_stats([op.latency for op in timed
                               if op.kind == kind and _phase(op.t, start, end) == ph])
            for ph in PHASES}
        latency[kind]["all"] = latency_stats([op.latency for op in timed if op.kind == kind])
    # The hot readers' opens hit cached verdicts in every mode; these are the opens
    # that needed a verdict (indexer: new files; writers and flush: modified files).
    latency["open_needing_scan"] = {
        ph: latency_stats([op.latency for op in timed if op.kind == "open"
                           and not op.actor.startswith("reader")
                           and _phase(op.t, start, end) == ph])
        for ph in PHASES}
    opens = [op for op in r.ops if op.kind == "open" and op.path not in r.infected]
    availability = {ph: _availability(op for op in opens if _phase(op.t, start, end) == ph)
                    for ph in PHASES}
    availability["all"] = _availability(opens)
    # Time the guest's threads sat in open() while the appliance was down: what a
    # fail-closed filter costs even when most opens (cached verdicts) are fast.
    blocked = sum(op.latency for op in timed
                  if op.kind == "open" and _phase(op.t, start, end) == "during")

    caught = {q["original_path"]: q for q in r.quarantine}
    infected = []
    for path, expected in sorted(r.infected.items()):
        q = caught.get(path)
        attempts = [op for op in r.ops if op.path == path and op.kind == "open"]
        when = None if q is None else q["t"]
        how = None if when is None else (
            "by the drain, after the appliance returned" if path in r.extra["drain_caught"]
            else "on open" if when < start else "on open, during the outage" if when < end
            else "on access (a waiting scan), once the appliance returned")
        infected.append({
            "path": path, "expected_signature": expected, "caught": q is not None,
            "signature": None if q is None else q["signature"],
            "caught_at_s": None if when is None else round(when, 3), "how": how,
            "served_unscanned": any(op.ok and not op.write for op in attempts),
            "denied_opens": sum(not op.ok for op in attempts),
            "opened_unscanned_by": [
                {"uid": x["uid"], "pid": x["pid"], "command": x["command"],
                 "at_s": round(x["time"] - r.extra["wall_t0"], 3)}
                for x in r.exposures.get(path, [])],
        })
    depth = [s.depth for s in r.samples]
    return {
        "mode": r.mode, "description": r.description,
        "events_s": {k: round(v, 3) for k, v in sorted(r.events.items(), key=lambda kv: kv[1])},
        "quiesce": {k: round(v, 4) if isinstance(v, float) else v
                    for k, v in r.quiesce.items()},
        "latency": latency, "availability": availability,
        "blocked_in_open_s": round(blocked, 3),
        "exposed_files": len(r.exposed),
        "unscanned_after_drain": len(r.unscanned), "unscanned_paths": r.unscanned[:50],
        "journal_left": len(r.remaining),
        "journal_peak": max(depth) if depth else 0,
        "coverage_s": None if r.coverage_s is None else round(r.coverage_s, 3),
        "infected": infected,
        "infected_caught": sum(i["caught"] for i in infected),
        "infected_total": len(infected),
        "gate": r.gate, "drain": r.drain,
    }


# --- rendering -----------------------------------------------------------------------------

def fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else fmt_s(v / 1000)


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


TABLE_HEAD = ("mode", "quiesce", "open p50 / p99 / max during outage", "blocked",
              "avail. all / outage", "unscanned", "infected caught", "coverage")


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for s in summaries:
        lat = s["latency"]["open"]["during"]
        av = s["availability"]
        rows.append((
            s["mode"], fmt_s(s["quiesce"].get("total_s")),
            f"{fmt_ms(lat['p50_ms'])} / {fmt_ms(lat['p99_ms'])} / {fmt_ms(lat['max_ms'])}",
            fmt_s(s["blocked_in_open_s"]),
            f"{fmt_pct(av['all']['percent'])} / {fmt_pct(av['during']['percent'])}",
            str(s["unscanned_after_drain"]), f"{s['infected_caught']}/{s['infected_total']}",
            fmt_s(s["coverage_s"]),
        ))
    return rows


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _mode_section(s: dict[str, Any], png: str | None) -> list[str]:
    q = s["quiesce"]
    lines = [f"## {s['mode']}", "", f"_{s['description']}_", ""]
    if png:
        lines += [f"![{s['mode']} timeline]({png})", ""]
    lines += [
        f"- quiesce: {fmt_s(q.get('total_s'))} in all (freeze hook {fmt_s(q.get('hook_s'))}, "
        f"flush {fmt_s(q.get('flush_s'))} with {q.get('flush_ok', 0)}/{q.get('flush_total', 0)} "
        f"state files written, sync {fmt_s(q.get('sync_s'))})",
        f"- journal: peak {s['journal_peak']} deferred; coverage "
        f"{fmt_s(s['coverage_s'])} after the appliance returned; {s['journal_left']} left at "
        "the end",
        f"- exposure: {s['exposed_files']} files opened during the outage; "
        f"**{s['unscanned_after_drain']} never scanned** by the end"
        + (f" ({', '.join(s['unscanned_paths'][:8])}"
           f"{', ...' if s['unscanned_after_drain'] > 8 else ''})"
           if s["unscanned_after_drain"] else ""),
        "", "| latency | phase | n | p50 | p99 | max |", "|---|---|---|---|---|---|",
    ]
    for kind in ("open", "open_needing_scan", "close"):
        for ph in PHASES:
            st = s["latency"][kind][ph]
            label = "open (needing a scan)" if kind == "open_needing_scan" else kind
            lines.append(f"| {label} | {ph} | {st['n']} | {fmt_ms(st['p50_ms'])} | "
                         f"{fmt_ms(st['p99_ms'])} | {fmt_ms(st['max_ms'])} |")
    av = s["availability"]
    lines += ["", "availability (opens of clean files that succeeded): " + ", ".join(
        f"{ph} {fmt_pct(av[ph]['percent'])} ({av[ph]['ok']}/{av[ph]['opens']})"
        for ph in (*PHASES, "all")), "", "| infected file | caught | when | how | "
        "opened unscanned by |", "|---|---|---|---|---|"]
    for i in s["infected"]:
        who = ", ".join(f"uid {x['uid']} pid {x['pid']} `{x['command']}` at {x['at_s']:.1f}s"
                        for x in i["opened_unscanned_by"]) or (
            "served unscanned (fail-open: not journaled)" if i["served_unscanned"] else "nobody")
        at = "-" if i["caught_at_s"] is None else f"{i['caught_at_s']:.1f}s"
        lines.append(f"| {i['path']} ({i['expected_signature']}) | "
                     f"{'yes' if i['caught'] else '**no**'} | {at} | "
                     f"{i['how'] or ('denied, never served' if i['denied_opens'] else '-')} | "
                     f"{who} |")
    return [*lines, ""]


def render_markdown(summaries: Sequence[dict[str, Any]], params: Params, meta: dict[str, Any],
                    pngs: dict[str, str]) -> str:
    head = [
        "# vfile simulated migration with an appliance outage", "",
        f"Run {meta['started']} on {meta['appliance']}; {params.files} files, "
        f"{params.readers} readers, {params.writers} writers, an indexer; fault "
        f"`{params.fault}` during {params.outage} (start:duration, s), migration window "
        f"{params.window}, workload until {params.duration:g}s"
        + (f" (--quick: every timeout x{params.scale:g})" if params.quick else "")
        + ".", "",
        f"Command: `{meta['command']}`", "",
        markdown_table(TABLE_HEAD, table_rows(summaries)), "",
        "- **quiesce**: the migration's freeze step: `vfile quiesce` (legacy: nothing), "
        "flush the guest's state files (open, write, fsync, close), sync.",
        "- **latency** of open(): the workload's syscalls through the mount while the "
        "appliance was down; **blocked**: the total time the guest's threads spent in those "
        "opens; **avail.**: opens of clean files that succeeded.",
        "- **unscanned**: files opened during the outage with no verdict and not quarantined "
        "once the drain is done.",
        "- **coverage**: from the appliance's return until no journal entry made before it "
        "is left.",
        "- legacy is vfile configured as a hypervisor-style filter (see its line below); "
        "it still journals writes, which only flatters it.", "",
    ]
    if params.appliance != "builtin":
        head += ["Note: the generated .hdb signatures are only known to the built-in "
                 "appliance; with another appliance only the EICAR files count as infected.",
                 ""]
    body: list[str] = []
    for s in summaries:
        body += _mode_section(s, pngs.get(s["mode"]))
    return "\n".join(head + body)


def write_report(results: Sequence[ModeResult], params: Params, report_dir: Path,
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Write report.json, report.md and the plots; return the JSON document."""
    from vfile.simulate import plot

    report_dir.mkdir(parents=True, exist_ok=True)
    summaries = [summarize(r, params) for r in results]
    pngs: dict[str, str] = {}
    plot_error = None
    try:
        for r in results:
            name = f"{r.mode}.png"
            plot.plot_mode(r, params, report_dir / name)
            pngs[r.mode] = name
        plot.plot_comparison(summaries, report_dir / "comparison.png")
        pngs["comparison"] = "comparison.png"
    except ImportError as err:  # matplotlib is an optional extra
        plot_error = f"no plots: {err} (pip install 'vfile[simulate]')"
    doc = {
        "meta": {**meta, "plots": pngs, "plot_error": plot_error},
        "params": {"files": params.files, "readers": params.readers,
                   "writers": params.writers, "outage": str(params.outage),
                   "window": str(params.window), "after": params.after, "fault": params.fault,
                   "modes": list(params.modes), "appliance": params.appliance,
                   "quick": params.quick, "scale": params.scale,
                   "duration": params.duration},
        "modes": {s["mode"]: s for s in summaries},
    }
    (report_dir / "report.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    md = render_markdown(summaries, params, meta, pngs)
    if "comparison" in pngs:
        md += "\n## All modes\n\n![quiesce, slowest open, time blocked](comparison.png)\n"
    if plot_error:
        md += f"\n{plot_error}\n"
    (report_dir / "report.md").write_text(md)
    return doc


def default_report_dir() -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("reports") / f"migration-{stamp}"
