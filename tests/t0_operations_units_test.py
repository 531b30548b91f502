"""The operations pieces without a mount: the fstab helper's option translation,
sd_notify, JSON log lines, the audit log, the metrics address and exposition."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vfile.errors import Exit, UserError
from vfile.mount_helper import translate
from vfile.notify import notify, watchdog_interval
from vfile.observe.audit import AuditLog
from vfile.observe.logfmt import JsonFormatter, formatter
from vfile.observe.metrics import Metrics, parse_address

# --- mount.fuse.vfile ------------------------------------------------------------------


def test_helper_translates_fstab_options() -> None:
    args, fake = translate(["/srv/d", "/mnt/d", "-o",
                            "rw,defaults,_netdev,x-systemd.requires=clamd.service,"
                            "appliance=clamd:///run/c.sock,appliance=icap://h:1344/av,"
                            "fail_mode=closed,state-dir=/var/lib/v,timeout=3,allow_other,"
                            "metrics=127.0.0.1:9310,audit_log=/var/log/a.jsonl,verbose"])
    assert not fake
    assert args == ["mount", "--appliance", "clamd:///run/c.sock", "--appliance",
                    "icap://h:1344/av", "--fail-mode", "closed", "--state-dir", "/var/lib/v",
                    "--timeout", "3", "-o", "allow_other", "--metrics", "127.0.0.1:9310",
                    "--audit-log", "/var/log/a.jsonl", "-v", "--", "/srv/d", "/mnt/d"]


def test_helper_flags_and_errors() -> None:
    args, fake = translate(["-fnv", "SRC", "MNT", "-t", "fuse.vfile"])
    assert fake and args == ["mount", "-v", "--", "SRC", "MNT"]
    assert translate(["SRC", "MNT", "-s", "-o", "bogus"])[0] == ["mount", "--", "SRC", "MNT"]
    for bad in (["SRC"], ["SRC", "MNT", "-o", "bogus=1"], ["SRC", "MNT", "-o", "ro"],
                ["SRC", "MNT", "-x"], ["SRC", "MNT", "-o"]):
        with pytest.raises(UserError) as err:
            translate(bad)
        assert err.value.exit_code == Exit.USAGE


# --- sd_notify ----------------------------------------------------------------------------


def test_notify_abstract_and_path_sockets(tmp_path: Path) -> None:
    name = f"vfile-test-{os.getpid()}-{id(tmp_path)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as plain:
        abstract.bind("\0" + name)
        plain.bind(str(tmp_path / "notify.sock"))
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(4096) == b"READY=1"
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        assert plain.recv(4096) == b"STOPPING=1"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


# --- logs ----------------------------------------------------------------------------------


def test_json_log_lines_carry_extra_fields_and_exceptions() -> None:
    record = logging.LogRecord("vfile.filter.gate", logging.WARNING, __file__, 1,
                               "denied: %r (profile %s)", ("a b.exe", "uploads"), None)
    record.path = "a b.exe"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "vfile.filter.gate"
    assert line["message"] == "denied: 'a b.exe' (profile uploads)"
    assert line["path"] == "a b.exe" and line["time"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in line["exception"]
    with pytest.raises(ValueError):
        formatter("xml")


def test_audit_log_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    audit = AuditLog(str(path)).open()
    audit.write("deny", "x.exe", {"verdict": "none", "uid": 1000, "pid": 42, "signature": None})
    audit.write("verdict", "y", {"verdict": "clean", "appliance": "clamd://h:1"})
    # Written by the audit writer thread, line-buffered: on disk soon, before close.
    deadline = time.monotonic() + 10
    while path.read_text().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    audit.close()
    assert [ln["event"] for ln in lines] == ["deny", "verdict"]
    assert lines[0]["uid"] == 1000 and "signature" not in lines[0]
    assert audit.lines == 2
    with pytest.raises(UserError) as err:
        AuditLog(str(tmp_path / "sub" / "audit.jsonl" / "x")).open()
    assert err.value.exit_code == Exit.CONFIG


# --- metrics -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("9310", ("127.0.0.1", 9310)), (":9310", ("127.0.0.1", 9310)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:9310", ("::1", 9310)),
])
def test_metrics_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["", "host", "host:", "1.2.3.4:99999", "h:x"])
def test_bad_metrics_address(text: str) -> None:
    with pytest.raises(UserError) as err:
        parse_address(text)
    assert err.value.exit_code == Exit.CONFIG


async def test_metrics_exposition_from_status_pieces() -> None:
    status: dict[str, Any] = {
        "gate": lambda: {"cache_hits": 3, "exposures": 2, "denials": 1, "in_flight": 0},
        "appliances": lambda: [{"url": "clamd://a:1", "healthy": False, "state": "open",
                                "scans": 5, "errors": 4}],
        "drain": lambda: {"done": {"clean": 7, "error": 1}, "files_per_s": 50.0,
                          "paused": False, "in_flight": 0, "bytes_done": 10},
        "window": lambda: {"active": True, "remaining_s": 30.0, "windows_total": 1},
        "quota": lambda: {"default": {"state": "closed", "entries": 9, "bytes": 90}},
    }
    calls = []

    def journal_stats() -> dict[str, Any]:
        calls.append(1)
        return {"deferred": 9, "oldest_age_s": 12.5, "poisoned": 0}

    metrics = Metrics(status, journal_stats, info={"version": "0.1.0"})
    metrics.opened("allow", 0.0002)
    metrics.opened("deny", 0.5)
    metrics.scanned("clean", "clamd://a:1", 0.01)
    metrics.scanned("timeout", "", 2.0)
    text = (await metrics.render()).decode()
    await metrics.render()
    assert len(calls) == 1  # the journal walk is cached
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("vfile_exposures_total", ())] == 2
    assert samples[("vfile_appliance_up", (("appliance", "clamd://a:1"),))] == 0
    assert samples[("vfile_appliance_breaker_state",
                    (("appliance", "clamd://a:1"), ("state", "open")))] == 1
    assert samples[("vfile_journal_deferred", ())] == 9
    assert samples[("vfile_journal_oldest_age_seconds", ())] == 12.5
    assert samples[("vfile_drain_resolved_total", (("outcome", "clean"),))] == 7
    assert samples[("vfile_window_active", ())] == 1
    assert samples[("vfile_quota_state", (("profile", "default"), ("state", "closed")))] == 1
    assert samples[("vfile_open_duration_seconds_count", (("decision", "allow"),))] == 1
    assert samples[("vfile_scans_total", (("appliance", "none"), ("result", "timeout")))] == 1
    assert samples[("vfile_info", (("version", "0.1.0"),))] == 1


def test_child_argv_carries_the_operations_options() -> None:
    from vfile.mount import child_argv
    from vfile.options import MountOptions

    argv = child_argv(MountOptions("/s", "/m", metrics="127.0.0.1:9310", audit_log="/a.jsonl",
                                   log_format="json"), 5)
    for flag, value in (("--metrics", "127.0.0.1:9310"), ("--audit-log", "/a.jsonl"),
                        ("--log-format", "json")):
        assert argv[argv.index(flag) + 1] == value
    assert "--log-format" not in child_argv(MountOptions("/s", "/m"), 5)
