"""The filter through a real mount: verdicts (EICAR, clean files, remount, signatures).

Every test mounts with `mounted` (a `vfile mount --foreground` subprocess)
and scans through a real appliance in a separate process: the built-in one
(`vfile appliance serve`, faults switched with a fault file and SIGUSR1,
signatures reloaded with SIGHUP), the fault proxy in front of it (`vfile
appliance proxy`), or real clamd over FILDES. tests/t4_filter_outage_test.py
has the outages and fail modes; the helpers are in tests/filtering.py.

Timing is only ever asserted as "does not hang": a generous margin on top of
the profile's deadline.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from filtering import (
    DEADLINE,
    MARGIN,
    assert_quarantined,
    filtering,
    journal_list,
    journal_paths,
    timed_read,
    vfile_json,
)
from mounting import wait_for
from outage import running_appliance
from servers import EICAR_HDB_NAME, GENERATED_NAME, Clamd, Samples

from vfile.scanner.signatures import EICAR, EICAR_NAME

pytestmark = pytest.mark.mount


# --- tests -------------------------------------------------------------------------------


def test_eicar_denied_and_quarantined_clean_served_builtin(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "eicar.com").write_bytes(EICAR)
    (src / "sub").mkdir()
    (src / "sub" / "clean.txt").write_bytes(b"nothing to see\n" * 1000)
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        got = timed_read(f.mnt / "sub" / "clean.txt", DEADLINE + MARGIN)
        assert got.data == b"nothing to see\n" * 1000
        got = timed_read(f.mnt / "eicar.com", DEADLINE + MARGIN)
        assert got.errno == errno.EACCES
        assert_quarantined(f, "eicar.com", EICAR, EICAR_NAME)
        # The kernel may keep its dentry for ENTRY_TIMEOUT; then the mount agrees.
        wait_for("eicar.com to leave the mount", lambda: not (f.mnt / "eicar.com").exists(), 5)
        # The clean file's verdict is cached: opening it again scans nothing.
        before = f.gate()["scans"]
        assert (f.mnt / "sub" / "clean.txt").read_bytes() == b"nothing to see\n" * 1000
        gate = f.gate()
        assert gate["scans"] == before == 2
        assert gate["infections"] == 1 and gate["denials"] == 1
        assert journal_list(f.state) == {}
        assert "infected: 'eicar.com' signature " + EICAR_NAME in f.server.log()


def test_eicar_written_through_the_mount_is_quarantined_after_close(tmp_path: Path) -> None:
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        (f.mnt / "upload.txt").write_bytes(b"fine\n")
        with open(f.mnt / "dropped.com", "wb") as out:
            out.write(EICAR)
            # Intent before effect: queued before the create went on (journal.inflight),
            # committed while the writer still has it open.
            wait_for("the intent's commit", lambda: "dropped.com" in journal_paths(f.state))
        assert_quarantined(f, "dropped.com", EICAR, EICAR_NAME)
        f.wait_idle()
        # Both close scans resolved their intents: nothing left for the drain.
        assert journal_list(f.state) == {}
        assert f.gate()["close_scans"] == 2
        assert (f.mnt / "upload.txt").read_bytes() == b"fine\n"
        assert f.gate()["scans"] == 0  # the close scan's verdict serves the open


@pytest.mark.clamd
def test_real_clamd_over_fildes(tmp_path: Path, clamd_server: Clamd,
                                samples: Samples) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(samples.eicar, src / "eicar.com")
    shutil.copy(samples.generated, src / "generated.bin")
    shutil.copy(samples.clean, src / "clean.txt")
    log_before = clamd_server.log.read_text(errors="replace") if clamd_server.log.exists() \
        else ""
    with filtering(tmp_path, "--appliance", clamd_server.unix_url) as f:
        got = timed_read(f.mnt / "clean.txt", DEADLINE + MARGIN)
        assert got.data == samples.clean.read_bytes()
        assert timed_read(f.mnt / "eicar.com", DEADLINE + MARGIN).errno == errno.EACCES
        assert timed_read(f.mnt / "generated.bin", DEADLINE + MARGIN).errno == errno.EACCES
        assert_quarantined(f, "eicar.com", EICAR, EICAR_HDB_NAME)
        assert_quarantined(f, "generated.bin", samples.generated.read_bytes(), GENERATED_NAME)
        (app,) = f.status()["appliances"]
        assert app["url"] == clamd_server.unix_url and app["sig_version"].startswith("ClamAV")
        assert f.gate()["scans"] == 3
    # FILDES: clamd got the descriptor itself, so it names the source file (resolved
    # through /proc); a stream (INSTREAM) would be logged as "stream(...)".
    new_log = clamd_server.log.read_text(errors="replace")[len(log_before):]
    assert f"{os.path.realpath(src)}/eicar.com: {EICAR_HDB_NAME}" in new_log, new_log
    assert "stream" not in new_log, new_log


def test_verdicts_survive_a_remount(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "clean.txt").write_bytes(b"clean\n")
    (src / "eicar.com").write_bytes(EICAR)
    with running_appliance() as app:
        with filtering(tmp_path, "--appliance", app.url, "--fail-mode", "closed") as f:
            assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
            assert f.gate()["scans"] == 1
        with filtering(tmp_path, "--appliance", app.url, "--fail-mode", "closed") as f:
            assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
            gate = vfile_json("status", str(f.mnt))["gate"]
            assert gate["scans"] == 0, gate  # the verdict came from the journal
            assert gate["cache_misses"] == 1
            # A change behind vfile's back changes the identity: scanned again.
            # (Same length: the kernel may still cache the old size for ATTR_TIMEOUT.)
            (src / "clean.txt").write_bytes(b"CLEAN\n")
            assert (f.mnt / "clean.txt").read_bytes() == b"CLEAN\n"
            assert f.gate()["scans"] == 1


def test_signature_update_causes_a_rescan(tmp_path: Path,
                                          samples: Samples) -> None:
    sigdir = tmp_path / "sigs"
    sigdir.mkdir()
    (sigdir / "other.hdb").write_text(f"{'0' * 32}:1:Vfile.Test.Nothing\n")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(samples.generated, src / "generated.bin")
    (src / "clean.txt").write_bytes(b"clean\n")
    with running_appliance(sigdir) as app, \
            filtering(tmp_path, "--appliance", app.url) as f:
        assert timed_read(f.mnt / "generated.bin", DEADLINE + MARGIN).data is not None
        assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
        (old,) = f.status()["appliances"]
        assert f.gate()["scans"] == 2
        # New signatures that know the generated file; the appliance reloads on SIGHUP.
        shutil.copy(samples.sigdir / "vfile-test.hdb", sigdir / "vfile-test.hdb")
        app.reload()
        wait_for("the new signature version", lambda: f.status()["appliances"][0]["sig_version"]
                 != old["sig_version"])
        assert timed_read(f.mnt / "generated.bin", DEADLINE + MARGIN).errno == errno.EACCES
        assert (f.mnt / "clean.txt").read_bytes() == b"clean\n"
        assert f.gate()["scans"] == 4  # both rescanned under the new version
        # (the infected action runs after the open is denied)
        assert_quarantined(f, "generated.bin", samples.generated.read_bytes(), GENERATED_NAME)
        assert f.gate()["infections"] == 1
