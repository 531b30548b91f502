"""Close scans judged inline (scanner/inline.py) through a real mount on the embedded
built-in appliance: a small file just written through the mount is read once, hashed
and judged by the engine in the same call, without the pool's round trip; a larger
file, or an engine with a fault, still goes the pool's whole way (its breaker,
timeouts and fail modes), and a failing engine never yields a clean verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from filtering import (
    DEADLINE,
    Filter,
    assert_quarantined,
    config_file,
    filtering,
    journal_list,
    stored_verdict,
    write_settled,
)
from mounting import mounted, wait_for

from vfile.journal import Identity, Journal
from vfile.scanner.signatures import EICAR, EICAR_NAME

pytestmark = pytest.mark.mount


def test_small_close_scans_are_judged_inline(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        (app,) = f.status()["appliances"]
        assert app["url"] == "embedded", app
        for i in range(5):
            write_settled(f, f"small{i}.txt", f"content number {i}\n".encode() * 50)
        gate = f.gate()
        assert gate["close_scans_inline"] == 5, gate
        assert gate["close_scans_by_hash"] == 0, gate
        for i in range(5):
            rel = f"small{i}.txt"
            wait_for(f"{rel}'s verdict", lambda rel=rel: stored_verdict(f, rel) == "clean", 30)
        (app,) = f.status()["appliances"]
        assert app["scans"] >= 5 and app["errors"] == 0, app
        assert journal_list(f.state) == {}

        # Beyond the inline limit: the pool's whole way, the same verdict.
        write_settled(f, "large.bin", b"L" * (200 << 10))
        assert f.gate()["close_scans_inline"] == 5
        wait_for("large.bin's verdict", lambda: stored_verdict(f, "large.bin") == "clean", 30)

        # An infected small file is judged inline too, and acted on as before.
        write_settled(f, "dropped.com", EICAR)
        assert f.gate()["close_scans_inline"] == 6
        assert_quarantined(f, "dropped.com", EICAR, EICAR_NAME)


def test_failing_engine_is_never_judged_inline(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    with mounted(src, mnt, "--state-dir", str(tmp_path / "state"),
                 "--config", str(config_file(tmp_path)), "--timeout", str(DEADLINE),
                 "--fail-mode", "safe", env={"VFILE_EMBEDDED_FAULT": "garbage"}) as server:
        f = Filter(server, tmp_path / "state")
        write_settled(f, "a.txt", b"written under a broken engine\n")
        gate = f.gate()
        assert gate["close_scans_inline"] == 0, gate
        assert gate["close_scans"] == 1, gate
        # No verdict: the entry stays for the drain, and the failure is the pool's.
        assert stored_verdict(f, "a.txt") is None
        assert set(journal_list(f.state)) == {"a.txt"}
        (app,) = f.status()["appliances"]
        assert app["errors"] >= 1 and "malformed result" in app["last_error"], app


def test_unmount_with_closes_queued_leaves_none_unaccounted(tmp_path: Path) -> None:
    """A burst of creates, then at once an unmount: closes still queued in the batch
    (or their completions) end with the mount; every file has a verdict for its
    content or an entry for the drain, and the next mount serves them all."""
    n = 300
    with filtering(tmp_path) as f:
        for i in range(n):
            (f.mnt / f"b{i}.txt").write_bytes(f"burst file {i}\n".encode() * 20)
    with Journal.open(tmp_path / "state", readonly=True) as j:
        judged = {v.identity for v in j.verdicts()}
        deferred = {e.path for e in j.list_deferred()}
    unaccounted = [i for i in range(n) if f"b{i}.txt" not in deferred
                   and Identity.from_stat((tmp_path / "src" / f"b{i}.txt").stat()) not in judged]
    assert unaccounted == [], unaccounted
    with filtering(tmp_path) as f:
        f.wait_idle()
        wait_for("the drain", lambda: journal_list(f.state) == {}, 60)
        assert all((f.mnt / f"b{i}.txt").read_bytes() == f"burst file {i}\n".encode() * 20
                   for i in range(n))
