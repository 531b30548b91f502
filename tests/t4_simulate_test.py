"""`vfile simulate migration` end to end: four real mounts, an appliance outage, a report.

One run of the command (tiny parameters, --quick timeouts) is shared by the
assertions below; they read its report.json. What is asserted follows from
the fail modes, not from timing luck: safe serves every clean file and leaves
nothing unscanned; closed denies during the outage; open leaves files it
served during the outage unscanned; legacy's quiesce waits out its timeouts
while safe's does not (a wide margin: seconds against milliseconds).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vfile.simulate.report import latency_stats, percentile, table_rows
from vfile.simulate.scenario import MODES, make_params, mode_config, parse_span

pytestmark = pytest.mark.mount

SIM_ARGS = ("--quick", "--files", "40", "--writers", "1", "--outage", "1.5:2.5",
            "--window", "2:1.5", "--after", "1.5", "--drain-timeout", "20")


def sim_mounts() -> list[str]:
    """Live mounts of simulation runs (their temporary areas are named vfile-sim-*)."""
    with open("/proc/self/mounts") as f:
        return [line for line in f if "vfile-sim-" in line]


#: simulation mounts that were there before this module's run (not ours)
_OTHERS: set[str] = set()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any], str]]:
    out = tmp_path_factory.mktemp("sim") / "report"
    # Other runs on the machine (another checkout's tests) may have their own: only
    # mounts that appear during this run count as left behind by it.
    _OTHERS.update(sim_mounts())
    res = subprocess.run([sys.executable, "-m", "vfile", "simulate", "migration", *SIM_ARGS,
                          "--report", str(out)], capture_output=True, text=True, timeout=240,
                         check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    yield out, json.loads((out / "report.json").read_text()), res.stdout


def test_every_mode_reported(report: tuple[Path, dict[str, Any], str]) -> None:
    out, doc, stdout = report
    assert sorted(doc["modes"]) == sorted(MODES)
    assert doc["params"]["modes"] == list(MODES)  # the order they ran in
    for mode in MODES:
        png = out / f"{mode}.png"
        assert png.stat().st_size > 10_000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"## {mode}" in (out / "report.md").read_text()
        assert mode in stdout
    assert f"report: {out / 'report.md'}" in stdout
    # Only this run's own work area counts (named in its progress line): another
    # checkout's simulation may start during this one.
    ours = re.search(r"/vfile-sim-[^/\s]+/", stdout)
    assert ours, stdout
    left = {m for m in set(sim_mounts()) - _OTHERS if ours.group(0) in m}
    assert not left, f"a simulation mount was left behind: {left}"


def test_safe_serves_everything_and_scans_everything(
        report: tuple[Path, dict[str, Any], str]) -> None:
    safe = report[1]["modes"]["safe"]
    assert safe["availability"]["all"]["percent"] == 100.0
    assert safe["availability"]["during"]["opens"] > 0
    assert safe["unscanned_after_drain"] == 0
    assert safe["journal_left"] == 0
    assert safe["journal_peak"] > 0  # it did defer during the outage
    assert safe["coverage_s"] is not None
    # Every infected file is caught; those opened during the outage by the drain,
    # with the commands that opened them unscanned.
    assert safe["infected_caught"] == safe["infected_total"] == 5
    by_drain = [i for i in safe["infected"] if i["how"] and "drain" in i["how"]]
    assert {i["path"] for i in by_drain} >= {"mail/attachment-0.bin", "planted/dropper.com"}
    for item in by_drain:
        assert any(x["command"] == "cat" for x in item["opened_unscanned_by"]), item


def test_closed_denies_during_the_outage(report: tuple[Path, dict[str, Any], str]) -> None:
    closed = report[1]["modes"]["closed"]
    assert closed["availability"]["during"]["percent"] < 100.0
    # Not 100 %: a read while a writer holds the same file open (its bytes may be in the
    # writeback cache, not yet in the source a scan reads) is denied in a closed
    # profile (issue 13); the workload's readers and writers sometimes overlap.
    assert closed["availability"]["before"]["percent"] >= 95.0
    assert closed["unscanned_after_drain"] == 0


def test_open_leaves_files_unscanned(report: tuple[Path, dict[str, Any], str]) -> None:
    opened = report[1]["modes"]["open"]
    assert opened["availability"]["all"]["percent"] == 100.0
    assert opened["unscanned_after_drain"] > 0
    attachments = [i for i in opened["infected"] if i["path"].startswith("mail/")]
    assert attachments and all(not i["caught"] and i["served_unscanned"] for i in attachments)


def test_legacy_waits_where_safe_does_not(report: tuple[Path, dict[str, Any], str]) -> None:
    legacy, safe = report[1]["modes"]["legacy"], report[1]["modes"]["safe"]
    # legacy's flush waits out 1.25 s x 3 attempts at least once; safe's is in a window
    assert legacy["quiesce"]["total_s"] > 1.0
    assert legacy["quiesce"]["total_s"] > 5 * safe["quiesce"]["total_s"]
    assert legacy["latency"]["open"]["during"]["max_ms"] > safe["latency"]["open"]["during"][
        "max_ms"]
    assert legacy["blocked_in_open_s"] > safe["blocked_in_open_s"]


# --- the pure parts -----------------------------------------------------------------------

def test_percentile_and_stats() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert latency_stats([0.001, 0.002, 0.5]) == {"n": 3, "p50_ms": 2.0, "p99_ms": 500.0,
                                                   "max_ms": 500.0}
    assert latency_stats([])["p50_ms"] is None


@pytest.mark.parametrize("text", ["", "10", "10:", ":5", "a:b", "-1:5", "3:0", "nan:1"])
def test_bad_spans(text: str) -> None:
    with pytest.raises(ValueError, match="START:DURATION"):
        parse_span(text, "--outage")


def test_params_checked() -> None:
    assert make_params(quick=True).scale == 0.25
    with pytest.raises(ValueError, match="not a mode"):
        make_params(modes="safe,bogus")
    with pytest.raises(ValueError, match="before the outage ends"):
        make_params(outage="2:1", window="5:1")


def test_mode_configs_parse() -> None:
    from vfile.config.model import FailMode
    from vfile.config.reader import parse_config

    for mode in MODES:
        cfg = parse_config(mode_config(mode, 0.25, "/tmp/q"), source=mode)
        expected = FailMode.CLOSED if mode == "legacy" else FailMode(mode)
        assert cfg.default.fail_mode is expected
    legacy = parse_config(mode_config("legacy", 1.0, "/tmp/q"))
    assert legacy.default.deadline == 15.0 and legacy.pool.breaker_failures >= 1_000_000


def test_table_rows_render_missing_values() -> None:
    stats = {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    s = {"mode": "safe", "quiesce": {}, "latency": {"open": {"during": stats}},
         "blocked_in_open_s": 0.0,
         "availability": {"all": {"percent": None}, "during": {"percent": None}},
         "unscanned_after_drain": 0, "infected_caught": 0, "infected_total": 0,
         "coverage_s": None}
    assert table_rows([s]) == [("safe", "-", "- / - / -", "0 ms", "- / -", "0", "0/0", "-")]


def test_demo_walkthrough(tmp_path: Path) -> None:
    """examples/demo.py part 1 (`make demo` runs it, then the simulation tested above)."""
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    res = subprocess.run([sys.executable, str(demo), "--walkthrough-only"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "downloads/eicar.com: Permission denied" in out
    assert "quiesced in" in out
    assert "journal drained" in out
    # the dropper written during the outage was caught by the drain, with its opener
    assert "found infected with Eicar-Test-Signature after the fact" in out
    assert "(cat)" in out
    assert "dropper.com still in the source: False" in out
    assert not any("vfile-demo-" in line for line in Path("/proc/self/mounts").read_text()
                   .splitlines())
