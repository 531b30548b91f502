"""Metrics, JSON logs and the audit log of a live scanning mount, seen from outside:
scrape /metrics over HTTP, read the server's stderr and the audit file."""

from __future__ import annotations

import errno
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mounting import mounted, vfile_cmd
from scrape import Samples, metrics_url, scrape, value

from vfile.errors import Exit
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

def wait_for(url: str, name: str, at_least: float, deadline: float = 20.0) -> Samples:
    """Scrape until `name` reaches `at_least` (the journal figures are cached a few s)."""
    end = time.monotonic() + deadline
    while True:
        samples = scrape(url)
        if value(samples, name) >= at_least or time.monotonic() > end:
            return samples
        time.sleep(0.5)


def test_metrics_logs_and_audit_of_a_live_mount(tmp_path: Path) -> None:
    src, mnt, audit = tmp_path / "src", tmp_path / "mnt", tmp_path / "audit.jsonl"
    src.mkdir()
    mnt.mkdir()
    (src / "clean.txt").write_text("nothing to see")
    (src / "eicar.com").write_bytes(EICAR)
    with mounted(src, mnt, "--state-dir", str(tmp_path / "state"), "--metrics", "127.0.0.1:0",
                 "--audit-log", str(audit), "--log-format", "json", "-v") as server:
        url = metrics_url(server)
        before = scrape(url)
        assert value(before, "vfile_info", mountpoint=str(mnt)) == 1
        assert value(before, "vfile_window_active") == 0
        assert value(before, "vfile_appliance_up") == 1
        assert value(before, "vfile_appliance_breaker_state", state="closed") == 1
        assert value(before, "vfile_quota_state", profile="default", state="none") == 1
        assert value(before, "vfile_journal_deferred") == 0

        assert (mnt / "clean.txt").read_text() == "nothing to see"
        with pytest.raises(PermissionError) as denied:
            (mnt / "eicar.com").read_bytes()
        assert denied.value.errno == errno.EACCES
        # The infected action (and its count) completes just after the denied open returns.
        after = wait_for(url, "vfile_infections_total", 1)
        assert value(after, "vfile_scans_total", result="clean") >= 1
        assert value(after, "vfile_scans_total", result="infected") == 1
        assert value(after, "vfile_scan_duration_seconds_count", result="clean") >= 1
        assert value(after, "vfile_open_duration_seconds_count", decision="allow") >= 1
        assert value(after, "vfile_open_duration_seconds_count", decision="deny") == 1
        assert value(after, "vfile_infections_total") == 1

        # A window: opens are allowed at once and journaled (fail-safe).
        subprocess.run(vfile_cmd("quiesce", str(mnt)), check=True, capture_output=True,
                       timeout=60)
        (src / "late.txt").write_text("arrived during the window")
        assert (mnt / "late.txt").read_text() == "arrived during the window"
        during = wait_for(url, "vfile_journal_deferred", 1)
        assert value(during, "vfile_window_active") == 1
        assert value(during, "vfile_windows_total") == 1
        assert value(during, "vfile_deferrals_total") >= 1
        assert value(during, "vfile_exposures_total") >= 1
        assert value(during, "vfile_journal_deferred") >= 1
        assert value(during, "vfile_open_duration_seconds_count", decision="defer") >= 1
        subprocess.run(vfile_cmd("resume", str(mnt)), check=True, capture_output=True,
                       timeout=60)
        assert value(scrape(url), "vfile_window_active") == 0
        # The drain scans the deferred file once the window is over.
        drained = wait_for(url, "vfile_drain_resolved_total", 1)
        assert value(drained, "vfile_drain_resolved_total", outcome="clean") >= 1

        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
        assert missing.value.code == 404
        log_lines = [json.loads(line) for line in server.log().splitlines()]

    assert all({"time", "level", "logger", "message"} <= set(ln) for ln in log_lines)
    assert any(ln["logger"] == "vfile.filter.gate" and "infected" in ln["message"]
               for ln in log_lines)

    events = [json.loads(line) for line in audit.read_text().splitlines()]
    by = {(e["event"], e["path"], e.get("verdict")): e for e in events}
    assert ("verdict", "clean.txt", "clean") in by
    infected = by[("verdict", "eicar.com", "infected")]
    assert infected["signature"] and infected["action"] == "quarantine"
    assert infected["profile"] == "default" and infected["appliance"]
    deny = by[("deny", "eicar.com", "infected")]
    assert deny["action"] == "deny" and deny["uid"] == 0 and deny["pid"] > 0
    unscanned = by[("unscanned", "late.txt", "none")]
    assert unscanned["action"] == "defer" and unscanned["reason"] == "window"
    assert ("verdict", "late.txt", "clean") in by  # the drain's verdict, after the fact


def test_bad_metrics_address_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "m").mkdir()
    res = subprocess.run(vfile_cmd("mount", "--foreground", "--metrics", "nope",
                                   str(tmp_path / "s"), str(tmp_path / "m")),
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == Exit.CONFIG, res.stderr
    assert res.stderr.startswith("vfile: --metrics:")
    res = subprocess.run(vfile_cmd("mount", "--foreground", "--log-format", "xml",
                                   str(tmp_path / "s"), str(tmp_path / "m")),
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == Exit.USAGE, res.stderr
