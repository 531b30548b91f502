"""A filtering mount for tests, and what a test reads from it.

    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        got = timed_read(f.mnt / "x", DEADLINE + MARGIN)   # fails if the open hangs
        f.gate()["scans"]; f.wait_idle(); journal_list(f.state)

`filtering` mounts tmp_path/src on tmp_path/mnt with the journal in
tmp_path/state, a small probe interval and a short deadline, so outages are
noticed quickly. Timing is only ever asserted as "does not hang": a generous
margin on top of the profile's deadline.
"""

from __future__ import annotations

import contextlib
import json
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mounting import Server, mounted, vfile_cmd, wait_for
from outage import status

from vfile.journal.records import Identity
from vfile.journal.store import Journal

#: the profile deadline the tests mount with (seconds)
DEADLINE = 1.0
#: generous "does not hang" margin on top of a deadline
MARGIN = 3.0
#: how long to wait for something the mount does in the background
SETTLE = 15.0
#: small probe interval and timeouts, so outages are noticed quickly
POOL_TOML = """\
[pool]
attempt_timeout = "500ms"
probe_interval = "200ms"
breaker_cooldown = "{cooldown}"
"""


@dataclass
class Filter:
    """A live filtering mount and where its state lives."""

    server: Server
    state: Path

    @property
    def mnt(self) -> Path:
        return self.server.mountpoint

    @property
    def src(self) -> Path:
        return self.server.source

    def status(self) -> dict[str, Any]:
        return status(self.mnt)

    def gate(self) -> dict[str, Any]:
        gate: dict[str, Any] = self.status()["gate"]
        return gate

    def wait_appliance(self, healthy: bool) -> None:
        """Until the mount's pool (probe / breaker) sees every appliance up, or all down."""
        wait_for(f"appliances healthy={healthy}", lambda: all(
            (a["healthy"] and a["state"] == "closed") == healthy
            for a in self.status()["appliances"]))

    def wait_idle(self, deadline: float = 30.0) -> None:
        """Until no scan is in flight and no background (close) scan is pending."""
        wait_for("the gate to be idle", lambda: (g := self.gate())["in_flight"] == 0
                 and g["pending_intents"] == 0, deadline)


def config_file(tmp_path: Path, *, cooldown: str = "60s", extra: str = "") -> Path:
    path = tmp_path / "vfile.toml"
    path.write_text(POOL_TOML.format(cooldown=cooldown) + extra)
    return path


@contextlib.contextmanager
def filtering(tmp_path: Path, *args: str, cooldown: str = "60s", state: Path | None = None,
              src: Path | None = None) -> Iterator[Filter]:
    """Mount tmp_path/src on tmp_path/mnt with scanning, the journal in tmp_path/state."""
    src = src or tmp_path / "src"
    mnt = tmp_path / "mnt"
    state = state or tmp_path / "state"
    src.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    cfg = config_file(tmp_path, cooldown=cooldown)
    with mounted(src, mnt, "--state-dir", str(state), "--config", str(cfg),
                 "--timeout", str(DEADLINE), *args) as server:
        yield Filter(server, state)


def vfile_json(*args: str) -> Any:
    res = subprocess.run(vfile_cmd(*args, "--json"), capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def journal_list(state: Path) -> dict[str, dict[str, Any]]:
    """`vfile journal list --state-dir STATE --json`, by path."""
    return {e["path"]: e for e in vfile_json("journal", "list", "--state-dir", str(state))}


def journal_paths(state: Path) -> set[str]:
    """The deferred paths, read in-process (read-only, next to the live mount)."""
    j = Journal.open(state, readonly=True)
    try:
        return {e.path for e in j.list_deferred()}
    finally:
        j.close()


@dataclass
class Opened:
    elapsed: float
    data: bytes | None
    errno: int | None
    pid: int  # the thread the kernel saw open the file
    command: str


def timed_read(path: Path, limit: float) -> Opened:
    """Open and read `path` in a thread; fail if it takes longer than `limit` (a hang)."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["pid"] = threading.get_native_id()
        out["command"] = Path(f"/proc/self/task/{out['pid']}/comm").read_text().strip()
        t0 = time.monotonic()
        try:
            with open(path, "rb") as f:
                out["data"] = f.read()
        except OSError as err:
            out["errno"] = err.errno
        out["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit)
    # The mount's teardown (`mounted`) kills the server, which releases a stuck thread.
    assert not th.is_alive(), f"open of {path} did not return within {limit}s"
    return Opened(out["elapsed"], out.get("data"), out.get("errno"), out["pid"], out["command"])


def assert_quarantined(f: Filter, rel: str, content: bytes, signature: str) -> None:
    """`rel` is gone from the source and sits 0600 in the 0700 quarantine, recorded."""
    qdir = f.state / "quarantine"
    wait_for(f"{rel} to leave the source", lambda: not (f.src / rel).exists())
    assert stat.S_IMODE(qdir.stat().st_mode) == 0o700
    records = [r for r in vfile_json("quarantine", "list", "--state-dir", str(f.state))
               if r["original_path"] == rel]
    assert len(records) == 1, records
    rec = records[0]
    assert signature in rec["signature"], rec
    qfile = Path(rec["quarantine_path"])
    assert qfile.parent == qdir
    assert stat.S_IMODE(qfile.stat().st_mode) == 0o600
    assert qfile.read_bytes() == content


def write_settled(f: Filter, rel: str, data: bytes) -> None:
    """Write `rel` through the mount and wait until its close scan ended."""
    (f.mnt / rel).write_bytes(data)
    wait_for(f"{rel}'s close scan", lambda: f.gate()["pending_intents"] == 0, 30)


def stored_verdict(f: Filter, rel: str) -> str | None:
    """The outcome stored for the source file `rel` as it is now, if any."""
    identity = Identity.from_stat((f.src / rel).stat())
    with Journal.open(f.state, readonly=True) as j:
        found = [v for v in j.verdicts() if v.identity == identity]
    return found[0].outcome if found else None
