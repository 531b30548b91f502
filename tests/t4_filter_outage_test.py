"""The filter through a real mount while the appliance is down: fail modes, the
journal, fail-safe boot. Helpers (appliance processes, the mount, timed opens)
live in tests/t4_filter_test.py.

Outages are real: the built-in appliance process refusing connections
(`refuse`) or the fault proxy in front of it swallowing every reply
(`blackhole`), both switched with SIGUSR1 while the mount runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from filtering import DEADLINE, MARGIN, Filter, filtering, journal_list, journal_paths, timed_read
from mounting import wait_for
from outage import Proc, running_appliance, running_proxy

from vfile.scanner.signatures import EICAR, EICAR_NAME

pytestmark = pytest.mark.mount



def attempts(f: Filter) -> int:
    """Scan attempts the mount's pool made, on every appliance (failed ones included)."""
    return sum(a["scans"] for a in f.status()["appliances"])


@contextlib.contextmanager
def outage_setup(fault: str) -> Iterator[tuple[Proc, Proc]]:
    """(the appliance, what the mount talks to): the proxy in front for `blackhole`."""
    with running_appliance() as app:
        if fault == "blackhole":
            with running_proxy(app.url) as proxy:
                yield app, proxy
        else:
            yield app, app


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
@pytest.mark.parametrize("mode", ["closed", "open", "safe"])
def test_fail_mode_under_outage(tmp_path: Path, mode: str, fault: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("warm.txt", "a.txt", "b.txt"):
        (src / name).write_bytes(f"{name}\n".encode())
    with outage_setup(fault) as (_app, front), \
            filtering(tmp_path, "--appliance", front.url, "--fail-mode", mode) as f:
        assert timed_read(f.mnt / "warm.txt", DEADLINE + MARGIN).data == b"warm.txt\n"
        front.set_fault(fault)

        # The outage is news to the mount: the open may wait, but only for the deadline.
        first = timed_read(f.mnt / "a.txt", DEADLINE + MARGIN)
        # Once the probe / breaker knows, nothing waits on the appliance again.
        f.wait_appliance(healthy=False)
        tried = attempts(f)
        second = timed_read(f.mnt / "b.txt", DEADLINE + MARGIN)
        # A file with a verdict stays readable during the outage, in every mode.
        assert timed_read(f.mnt / "warm.txt", DEADLINE + MARGIN).data == b"warm.txt\n"
        # Neither open waited on the appliance: no attempt was made (counted, not timed,
        # so a loaded machine cannot make this flaky).
        assert attempts(f) == tried, (second, f.status()["appliances"])

        # One line tells the operator; no line per open.
        assert f.server.log().count(f"appliance {front.url} unavailable") == 1, f.server.log()
        entries = journal_list(f.state)
        gate = f.gate()
        if mode == "closed":
            assert (first.errno, second.errno) == (errno.EACCES, errno.EACCES), (first, second)
            assert entries == {}
            assert gate["denials"] == 2
            assert "denied: 'a.txt' (profile default): no verdict within 1s" in f.server.log()
            return
        assert first.data == b"a.txt\n" and second.data == b"b.txt\n", (first, second)
        assert gate["exposures"] == 2 and gate["denials"] == 0
        if mode == "open":
            assert entries == {}
            assert "exposure: 'a.txt' opened unscanned" in f.server.log()
            return
        assert set(entries) == {"a.txt", "b.txt"}
        assert entries["b.txt"]["reason"] == "unavailable"
        for got, name in ((first, "a.txt"), (second, "b.txt")):
            (exposure,) = entries[name]["exposures"]
            assert (exposure["uid"], exposure["pid"], exposure["command"]) == \
                (os.getuid(), got.pid, got.command), (exposure, got)
            assert entries[name]["identity"]["size"] == len(name) + 1


def test_written_during_outage_is_journaled_before_close_and_drained_later(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "old.txt").write_bytes(b"old\n")
    with running_appliance() as app, \
            filtering(tmp_path, "--appliance", app.url, cooldown="1s") as f:
        assert (f.mnt / "old.txt").read_bytes() == b"old\n"  # a clean verdict
        app.set_fault("refuse")
        f.wait_appliance(healthy=False)

        with open(f.mnt / "new.txt", "wb") as out:
            out.write(b"written while the appliance was away\n")
        assert "new.txt" in journal_list(f.state)  # right after close() returned
        with open(f.mnt / "old.txt", "r+b") as out:
            out.write(b"OLD")
        assert "old.txt" in journal_list(f.state)
        with open(f.mnt / "dropped.com", "wb") as out:
            out.write(EICAR)
        entries = journal_list(f.state)
        assert set(entries) == {"new.txt", "old.txt", "dropped.com"}
        assert {e["reason"] for e in entries.values()} == {"modified"}
        # The file just written is not treated as clean: it opens deferred (safe).
        assert timed_read(f.mnt / "old.txt", DEADLINE + MARGIN).data == b"OLD\n"
        # The close scans, unable to scan, leave each entry with the written identity.
        f.wait_idle()
        sizes = {p: e["identity"]["size"] for p, e in journal_list(f.state).items()}
        assert sizes == {"new.txt": 37, "old.txt": 4, "dropped.com": len(EICAR)}

        # The appliance returns: the drain scans everything, and acts after the fact.
        app.set_fault("none")
        wait_for("the drain to empty the journal", lambda: not journal_paths(f.state))
        assert f"appliance {app.url} available again" in f.server.log()
        wait_for("dropped.com to be quarantined", lambda: not (src / "dropped.com").exists())
        assert "found infected with " + EICAR_NAME in f.server.log()
        assert (f.mnt / "new.txt").read_bytes() == b"written while the appliance was away\n"


def test_fail_safe_boot_with_every_appliance_down(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a\n")
    (src / "eicar.com").write_bytes(EICAR)
    missing = f"clamd://{tmp_path}/nobody-listens.sock"
    with running_appliance() as app:
        app.set_fault("blackhole")  # every appliance down before the mount starts
        with filtering(tmp_path, "--appliance", missing, "--appliance", app.url,
                       cooldown="1s") as f:
            # Mounted with nothing to scan with: opens are allowed and journaled at once.
            assert timed_read(f.mnt / "a.txt", DEADLINE + MARGIN).data == b"a\n"
            assert timed_read(f.mnt / "eicar.com", DEADLINE + MARGIN).data == EICAR
            entries = journal_list(f.state)
            assert set(entries) == {"a.txt", "eicar.com"}
            assert all(e["exposures"] for e in entries.values())
            assert f.gate()["scans"] == 0

            # One appliance returns: the journal drains, and EICAR is dealt with after the fact.
            app.set_fault("none")
            wait_for("the drain to empty the journal", lambda: not journal_paths(f.state))
            wait_for("eicar.com to be quarantined", lambda: not (src / "eicar.com").exists())
            scans = f.gate()["scans"]
            assert (f.mnt / "a.txt").read_bytes() == b"a\n"
            assert f.gate()["scans"] == scans  # a.txt's verdict came from the drain
