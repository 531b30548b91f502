"""Numeric command-line options refuse NaN, infinity and absurd values (l28).

Each case ran on main before the fix: `vfile scan --timeout nan` and `vfile appliance
cache --attempt-timeout nan` were tracebacks (exit 1: trio refuses a NaN deadline),
`vfile scan --timeout inf` waited on the appliance with no deadline, `--jobs 100000000`
hung the scan, `vfile appliance cache --ttl nan` / `--hot-interval nan` served with
them, and `vfile drain MNT now --wait --wait-timeout nan` on a live mount was taken
(a deadline that never passes). Each is now exit 2 with the option and its range, and
nothing is started."""

from __future__ import annotations

import subprocess

import pytest
from conftest import Tree
from mounting import mounted, vfile_cmd

from vfile.errors import Exit

CACHE = ["appliance", "cache", "--listen", "tcp://127.0.0.1:0", "--upstream", "clamd:///nowhere",
         "--redis", "redis://127.0.0.1:1/0"]


@pytest.mark.parametrize(("args", "option"), [
    (["scan", "--timeout", "nan", "-a", "clamd:///nowhere", "/etc/hostname"], "--timeout"),
    (["scan", "--timeout", "inf", "-a", "clamd:///nowhere", "/etc/hostname"], "--timeout"),
    (["scan", "--timeout", "0", "-a", "clamd:///nowhere", "/etc/hostname"], "--timeout"),
    (["scan", "--jobs", "100000000", "-a", "clamd:///nowhere", "/etc/hostname"], "--jobs"),
    ([*CACHE, "--ttl", "nan"], "--ttl"),
    ([*CACHE, "--attempt-timeout", "nan"], "--attempt-timeout"),
    ([*CACHE, "--hot-interval", "nan"], "--hot-interval"),
    ([*CACHE, "--rescan-rate", "inf"], "--rescan-rate"),
    ([*CACHE, "--max-inflight", "0"], "--max-inflight"),
    (["simulate", "migration", "--after", "nan"], "--after"),
    (["simulate", "migration", "--drain-timeout", "nan"], "--drain-timeout"),
    (["simulate", "migration", "--files", "1000000000000"], "--files"),
])
def test_a_number_out_of_range_is_refused(args: list[str], option: str) -> None:
    res = subprocess.run(vfile_cmd(*args), capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == Exit.USAGE, (res.returncode, res.stdout, res.stderr)
    assert option in res.stderr and "between" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_drain_wait_timeout_nan_is_refused_on_a_live_mount(tree: Tree) -> None:
    with mounted(tree.source, tree.mountpoint):
        res = subprocess.run(vfile_cmd("drain", str(tree.mountpoint), "now", "--wait",
                                       "--wait-timeout", "nan"),
                             capture_output=True, text=True, timeout=60, check=False)
        ok = subprocess.run(vfile_cmd("drain", str(tree.mountpoint), "now", "--wait",
                                      "--wait-timeout", "30"),
                            capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == Exit.USAGE, (res.returncode, res.stdout, res.stderr)
    assert "--wait-timeout must be between 0 and" in res.stderr
    assert ok.returncode == 0, ok.stderr
