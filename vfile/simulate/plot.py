"""Timeline plots (PNG, matplotlib's Agg backend: no display needed).

One figure per mode, two panels sharing the time axis:
- top: every open (dots) and close (small dots) latency over time, log scale;
  failed opens as red crosses;
- bottom: journal depth (deferred scans) over time.
Both carry the outage (red), the migration window (blue) and the time the
mount saw its appliance down (grey, from the status samples) as shaded spans.

`plot_comparison` draws open latency percentiles during the outage per mode.
matplotlib is an optional dependency (`pip install 'vfile[simulate]'`); this
module is imported only when a report is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt

from vfile.simulate.run import ModeResult
from vfile.simulate.scenario import Params

MIN_LATENCY = 1e-5  # log scale: clamp zero-ish latencies to 10 µs


def _down_spans(r: ModeResult) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for s in r.samples:
        if not s.healthy and start is None:
            start = s.t
        elif s.healthy and start is not None:
            spans.append((start, s.t))
            start = None
    if start is not None and r.samples:
        spans.append((start, r.samples[-1].t))
    return spans


def _shade(ax: Any, r: ModeResult, params: Params, legend: bool) -> None:
    ev = r.events
    o0, o1 = ev.get("outage_start", params.outage.start), ev.get("outage_end", params.outage.end)
    ax.axvspan(o0, o1, color="tab:red", alpha=0.10, label="appliance down (fault)" if legend
               else None)
    if r.mode != "legacy":
        w0 = ev.get("quiesce_start", params.window.start)
        w1 = ev.get("resume", params.window.end)
        ax.axvspan(w0, w1, color="tab:blue", alpha=0.15, label="window (quiesce..resume)"
                   if legend else None)
    elif "quiesce_start" in ev:
        ax.axvspan(ev["quiesce_start"], ev.get("quiesced", ev["quiesce_start"]),
                   color="tab:purple", alpha=0.15, label="freeze+flush (no window)"
                   if legend else None)
    for i, (a, b) in enumerate(_down_spans(r)):
        ax.axvspan(a, b, ymin=0.0, ymax=0.04, color="0.3", alpha=0.8,
                   label="mount sees appliance down" if legend and i == 0 else None)


def plot_mode(r: ModeResult, params: Params, path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    timed = [op for op in r.ops if op.actor != "user"]
    for kind, ok, style in (("open", True, {"s": 8, "color": "tab:green", "label": "open"}),
                            ("close", True, {"s": 3, "color": "tab:gray", "label": "close"}),
                            ("open", False, {"s": 24, "color": "tab:red", "marker": "x",
                                             "label": "open failed (EACCES)"})):
        pts = [op for op in timed if op.kind == kind and op.ok == ok]
        if pts:
            top.scatter([op.t for op in pts], [max(op.latency, MIN_LATENCY) for op in pts],
                        linewidths=0.8, **style)
    top.set_yscale("log")
    top.set_ylabel("latency (s, log)")
    top.set_title(f"{r.mode}: {r.description}", fontsize=10)
    _shade(top, r, params, legend=True)
    top.legend(loc="upper right", fontsize=7, ncol=2)
    top.grid(True, which="major", alpha=0.3)
    bottom.step([s.t for s in r.samples], [s.depth for s in r.samples], where="post",
                color="tab:orange")
    bottom.set_ylabel("journal depth")
    bottom.set_xlabel("time since the workload started (s)")
    bottom.grid(True, alpha=0.3)
    _shade(bottom, r, params, legend=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """Three bars per mode: the migration's quiesce, the slowest open during the
    outage, and the time the guest's threads spent blocked in open() meanwhile."""
    modes = [s["mode"] for s in summaries]
    panels = (
        ("migration quiesce (s)", [s["quiesce"].get("total_s") or 0.0 for s in summaries]),
        ("slowest open() in the outage (s)",
         [(s["latency"]["open"]["during"]["max_ms"] or 0.0) / 1000 for s in summaries]),
        ("time blocked in open() (s)", [s["blocked_in_open_s"] for s in summaries]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    colors = ["tab:purple" if m == "legacy" else "tab:blue" for m in modes]
    for ax, (title, values) in zip(axes, panels, strict=True):
        bars = ax.bar(modes, [max(v, MIN_LATENCY) for v in values], color=colors)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s",
                        (bar.get_x() + bar.get_width() / 2, max(v, MIN_LATENCY)),
                        ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
