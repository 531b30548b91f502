"""A full journal through a real mount: unscanned opens fail with EIO, quietly.

The state directory is on a small tmpfs that is then filled up. During an
outage every open that needs a journal entry fails with EIO (fail-safe: no
unrecorded unscanned open), and the server logs one rate-limited line, not a
traceback per open; the count shows in `vfile status` and as a metric.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from lifecycle import Tree, open_errno, tree_config
from mounting import mounted
from outage import running_appliance, status
from scrape import scrape, value
from statedisks import fill

pytestmark = pytest.mark.mount

OPENS = 40


def _metrics_url(log: str) -> str:
    for line in log.splitlines():
        msg = json.loads(line)["message"]
        if msg.startswith("metrics on "):
            return str(msg.removeprefix("metrics on "))
    raise AssertionError(f"no metrics address in the log:\n{log}")


def test_full_journal_fails_opens_with_one_log_line(tree: Tree, small_state: Path) -> None:
    tree.state = small_state / "state"
    for i in range(OPENS):
        (tree.source / (f"f{i:03d}-" + "x" * 200)).write_text(f"unscanned {i}\n")
    with running_appliance(fault="refuse") as app, \
            mounted(tree.source, tree.mountpoint, "--config", str(tree_config(tree, app)),
                    "--log-format", "json", "--metrics", "127.0.0.1:0", "-v") as server:
        fill(small_state)
        results = [open_errno(tree.mountpoint / (f"f{i:03d}-" + "x" * 200))
                   for i in range(OPENS)]
        assert results.count(errno.EIO) >= OPENS - 5, results  # a few may fit in free pages
        assert set(results) <= {0, errno.EIO}
        st = status(tree.mountpoint)
        assert st["gate"]["journal_full"] == results.count(errno.EIO)
        samples = scrape(_metrics_url(server.log()))
        assert value(samples, "vfile_journal_full_total") == results.count(errno.EIO)
        log = server.log()
    assert "Traceback" not in log
    full = [x for x in log.splitlines() if "journal full" in json.loads(x)["message"]]
    assert 1 <= len(full) <= 2, full
