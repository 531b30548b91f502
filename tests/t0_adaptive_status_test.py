"""The adaptive model in `vfile status` and in the Prometheus metrics (pure rendering)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from vfile.cli.cmd_control import _adaptive_line
from vfile.observe.metrics import Metrics

LEARNT = {"enabled": True, "samples": 120, "fixed_ms": 0.4, "per_mib_ms": 2.5,
          "deviation_ms": 0.1, "range_bytes": 1 << 21, "hedges": 3, "hedge_wins": 2,
          "evicted": 5, "estimate_4KiB_ms": 0.41, "timeout_4KiB_ms": 25.0,
          "estimate_1MiB_ms": 2.9, "timeout_1MiB_ms": 13.2}


def test_status_line() -> None:
    line = _adaptive_line(LEARNT)
    assert line.startswith("adaptive")
    assert "estimate 4KiB 0.41ms" in line and "timeout 4KiB 25.0ms" in line
    assert "1MiB 13.2ms" in line and "hedges 3 (won 2)" in line and "cut short 5" in line
    learning = {**LEARNT, "samples": 3, "estimate_4KiB_ms": None, "estimate_1MiB_ms": None,
                "timeout_4KiB_ms": 1000.0, "timeout_1MiB_ms": 1000.0}
    assert "learning (3 samples)" in _adaptive_line(learning)
    assert "off" in _adaptive_line({**LEARNT, "enabled": False})


async def test_metrics() -> None:
    status: dict[str, Any] = {
        "gate": lambda: {},
        "appliances": lambda: [{"url": "clamd://a:1", "healthy": True, "state": "closed",
                                "scans": 5, "errors": 0, "adaptive": LEARNT}],
        "drain": lambda: {"done": {}},
        "window": lambda: {"active": False, "remaining_s": 0.0, "windows_total": 0},
        "quota": lambda: {},
    }
    metrics = Metrics(status, lambda: {}, info={"version": "0"})
    text = (await metrics.render()).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    a = ("appliance", "clamd://a:1")
    assert samples[("vfile_appliance_latency_estimate_seconds", (a, ("size", "4KiB")))] \
        == 0.41 / 1000
    assert samples[("vfile_appliance_attempt_timeout_seconds", (a, ("size", "1MiB")))] \
        == 13.2 / 1000
    assert samples[("vfile_appliance_hedges_total", (a,))] == 3
    assert samples[("vfile_appliance_attempts_cut_short_total", (a,))] == 5
