"""The per-profile grace after a signature update, through a real mount (issue 17).

The built-in appliance (`vfile appliance serve`, its own process) reloads its
signature directory on SIGHUP and reports a new version; the mount sees the
change on the next open. With `grace` on a profile, files whose verdict under
the previous version was clean open at once, each with a journal entry
(reason `grace`) that the drain rescans under the new version; an infected
verdict never carries over, and a profile without grace scans as before.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import pytest
from filtering import DEADLINE, MARGIN, Filter, assert_quarantined, journal_list, timed_read
from mounting import mounted, wait_for
from outage import running_appliance, unaccounted
from servers import GENERATED_NAME, Samples

from vfile import control
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

CONFIG = """\
[pool]
attempt_timeout = "500ms"
probe_interval = "200ms"
breaker_cooldown = "60s"

[[profile]]
name = "strict"
paths = ["strict/**"]
fail_mode = "closed"
deadline = 2
infected_action = "deny"

[[profile]]
name = "default"
fail_mode = "safe"
deadline = 2
grace = "10m"
infected_action = "quarantine"
"""


def _drain(f: Filter, action: str) -> dict[str, Any]:
    result: dict[str, Any] = control.call(f.mnt, "drain", {"action": action}, timeout=10)
    return result


def test_grace_carries_previous_clean_verdicts_and_the_drain_rescans_them(
        tmp_path: Path, samples: Samples) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "other.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    for d in (src / "lib", src / "strict", mnt):
        d.mkdir(parents=True)
    clean = {f"lib/{i}.so": f"library {i}\n".encode() * (i + 1) for i in range(6)}
    for rel, data in clean.items():
        (src / rel).write_bytes(data)
    # Clean under the old signatures, detected by the new ones.
    shutil.copy(samples.generated, src / "lib" / "generated.bin")
    (src / "strict" / "secret.txt").write_bytes(b"closed profile, no grace\n")
    cfg = tmp_path / "vfile.toml"
    cfg.write_text(CONFIG)
    with running_appliance(sigdir) as app, \
            mounted(src, mnt, "--state-dir", str(state), "--config", str(cfg),
                    "--appliance", app.url) as server:
        f = Filter(server, state)
        for rel, data in clean.items():
            assert (mnt / rel).read_bytes() == data
        assert timed_read(mnt / "lib" / "generated.bin", DEADLINE + MARGIN).data is not None
        assert (mnt / "strict" / "secret.txt").read_bytes() == b"closed profile, no grace\n"
        # EICAR is in every version: infected before the update (in the closed
        # profile, which only denies it, so it stays for the second look).
        (src / "strict" / "eicar.com").write_bytes(EICAR)
        assert timed_read(mnt / "strict" / "eicar.com", DEADLINE + MARGIN).errno == errno.EACCES
        assert f.gate()["scans"] == 9
        (old,) = f.status()["appliances"]
        _drain(f, "pause")  # so the carried-over entries can be seen before the rescan

        shutil.copy(samples.sigdir / "vfile-test.hdb", sigdir / "vfile-test.hdb")
        app.reload()
        wait_for("the new signature version",
                 lambda: f.status()["appliances"][0]["sig_version"] != old["sig_version"])
        new_sig = f.status()["appliances"][0]["sig_version"]

        # Carried over: every previous-version clean opens at once, no scan...
        for rel, data in clean.items():
            assert (mnt / rel).read_bytes() == data
        got = timed_read(mnt / "lib" / "generated.bin", DEADLINE + MARGIN)
        assert got.data == samples.generated.read_bytes()  # the bounded trade-off
        gate = f.gate()
        assert gate["scans"] == 9, gate
        # ...but not in the closed profile without grace, and never an infected one.
        assert (mnt / "strict" / "secret.txt").read_bytes() == b"closed profile, no grace\n"
        assert timed_read(mnt / "strict" / "eicar.com", DEADLINE + MARGIN).errno == errno.EACCES
        gate = f.gate()
        # secret.txt was scanned; eicar.com is denied by its taint (found infected,
        # unchanged since: vfile.filter.sticky), never by a carried-over verdict.
        assert gate["scans"] == 10, gate
        grace = gate["grace"]
        assert grace["previous"] == old["sig_version"] and grace["current"] == new_sig
        assert grace["active"] and grace["remaining_s"] > 0, grace
        assert grace["carried"] == 7 and grace["carried_pending"] == 7, grace
        # Every carried-over verdict is recorded: a journal entry with its own reason.
        entries = journal_list(state)
        carried = {*clean, "lib/generated.bin"}
        assert set(entries) == carried, entries
        assert {e["reason"] for e in entries.values()} == {"grace"}
        assert {e["profile"] for e in entries.values()} == {"default"}
        text = control.call(mnt, "status", timeout=10)["profiles"]
        assert {p["name"]: p["grace_s"] for p in text} == {"strict": 0, "default": 600}

        # The drain rescans them under the new version: the one the new signatures
        # detect is quarantined after the fact, the others get new-version verdicts.
        _drain(f, "resume")
        wait_for("the drain to rescan every carried-over file",
                 lambda: journal_list(state) == {}, 60)
        assert_quarantined(f, "lib/generated.bin", samples.generated.read_bytes(),
                           GENERATED_NAME)
        # Every file has a clean verdict at the new version (the infected one stays
        # denied by its infected verdict).
        assert unaccounted(src, state, new_sig) == ["strict/eicar.com"]
        wait_for("no carried-over file left pending",
                 lambda: f.gate()["grace"]["carried_pending"] == 0)
        # Now opens hit the new version's verdicts: nothing more is carried or scanned.
        before = f.gate()
        for rel, data in clean.items():
            assert (mnt / rel).read_bytes() == data
        after = f.gate()
        assert after["scans"] == before["scans"]
        assert after["grace"]["carried"] == 7
        assert journal_list(state) == {}


def test_no_grace_by_default_scans_after_an_update(tmp_path: Path) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "a.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    (src / "f.txt").write_bytes(b"f\n")
    with running_appliance(sigdir) as app, \
            mounted(src, mnt, "--state-dir", str(state), "--appliance", app.url) as server:
        f = Filter(server, state)
        assert (mnt / "f.txt").read_bytes() == b"f\n"
        (old,) = f.status()["appliances"]
        (sigdir / "b.hdb").write_text(f"{'1' * 32}:1:Vfile.Test.Other\n")
        app.reload()
        wait_for("the new signature version",
                 lambda: f.status()["appliances"][0]["sig_version"] != old["sig_version"])
        assert (mnt / "f.txt").read_bytes() == b"f\n"
        gate = f.gate()
        assert gate["scans"] == 2 and gate["grace"]["carried"] == 0, gate
        assert journal_list(state) == {}
