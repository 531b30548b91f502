"""A new file gets no journal record when its close scan covers it (cw23,
vfile.filter.newfiles): its intent is only noted in flight (the witness says
`pending`, the watermark stays below it) until its clean verdict is committed,
or its record is made after all. Through real mounts on the embedded default
appliance (no `--appliance`: the close scan judges small files at once, the
route that makes no record):

- a file held open for writing past the bound gets its record while still open,
  and nothing stays in flight (a SIGKILL then does not walk, and it is listed);
- a SIGKILL with creates whose close scans could not commit (the state disk
  frozen) walks at the next start, and every file has an entry or a verdict;
- a power loss after creates covered only by their (unsynced) verdicts walks,
  and every file has an entry or a verdict;
- creates during an appliance outage each get an entry once their close scan
  gave up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from lifecycle import SOON, Tree, cli, journal_rows, wait_until
from mounting import Server, force_unmount, mounted, wait_for
from outage import restarted_with_walk, signature_version, status, unaccounted
from statedisks import cutfs, frozen, loop_ext4
from unread import safe_config

from vfile.journal import Journal

pytestmark = pytest.mark.mount

FILES = 40


def _gate(mnt: Path) -> dict[str, int]:
    out: dict[str, int] = status(mnt)["gate"]
    return out


def _in_flight(mnt: Path) -> int:
    return int(status(mnt)["journal"]["durability"]["in_flight"])


@contextmanager
def _warm(src: Path, mnt: Path, state: Path, *args: str,
          env: dict[str, str] | None = None) -> Iterator[Server]:
    """A mount whose signature version is known (a file read and scanned clean)."""
    (src / "warm").write_bytes(b"warm-up")
    with mounted(src, mnt, *args, env=env) as server:
        wait_for("the signature version", lambda: (
            (mnt / "warm").read_bytes(), signature_version(state))[-1], 30)
        yield server


def _kill(server: Server, mnt: Path) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    force_unmount(mnt)


def test_a_file_held_open_gets_its_record_while_still_open(tree: Tree) -> None:
    """A writer holding a new file open (a database) must not keep the witness
    `pending` nor pin the watermark: past the bound its record is made, nothing is
    in flight, and a SIGKILL then needs no walk and leaves the file journaled."""
    conf = safe_config(tree.root, tree.state)
    args = ("--config", str(conf), "-v")
    with _warm(tree.source, tree.mountpoint, tree.state, *args) as server:
        fd = os.open(tree.mountpoint / "db", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"page one\n")
            # No record yet (the close scan may still cover it) ...
            wait_until(lambda: _gate(tree.mountpoint)["pending_intents"] == 1,
                       "the open file's intent")
            # ... and past the bound, its record while the file is still open.
            wait_until(lambda: _in_flight(tree.mountpoint) == 0
                       and _gate(tree.mountpoint)["new_files_unrecorded"] == 0,
                       "nothing in flight while the file is held open", SOON)
            assert _gate(tree.mountpoint)["new_files_recorded_late"] >= 1
            os.write(fd, b"page two\n")
            sig = signature_version(tree.state)
            _kill(server, tree.mountpoint)  # still open: its close never comes
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # (the mount is gone)
        assert unaccounted(tree.source, tree.state, sig) == []
        with Journal.open(tree.state, readonly=True) as j:
            assert j.get_deferred("db") is not None
    with mounted(tree.source, tree.mountpoint, *args) as again:
        text = again.log()  # the decision is logged before the mount serves
    assert "page cache survived" in text  # the witness did not say `pending`
    assert "recovery walk" not in text


def test_sigkill_with_close_scans_uncommitted_walks(tree: Tree) -> None:
    """Creates whose clean verdicts cannot commit (the state disk frozen) have neither
    record nor verdict in the journal at a SIGKILL; the next start walks first."""
    with loop_ext4(tree.root) as fs:
        state = fs / "state"
        conf = safe_config(tree.root, state)
        args = ("--config", str(conf), "-v")
        with _warm(tree.source, tree.mountpoint, state, *args) as server:
            wait_until(lambda: _in_flight(tree.mountpoint) == 0, "the warm-up settled")
            done: list[str] = []

            def create() -> None:
                for i in range(FILES):
                    (tree.mountpoint / f"new{i}").write_bytes(b"created %d" % i)
                    done.append(f"new{i}")

            with frozen(fs):
                th = threading.Thread(target=create, daemon=True)
                th.start()
                th.join(30)
                server.proc.send_signal(signal.SIGKILL)  # within the bound: unrecorded
            server.proc.wait(30)
            force_unmount(tree.mountpoint)
        assert len(done) == FILES, "creates waited on the frozen state disk"
        sig = signature_version(state)
        lost = unaccounted(tree.source, state, sig)
        assert len(lost) >= FILES - 1, f"the creates were journaled after all: {lost}"
        restarted_with_walk(tree.source, tree.mountpoint, state, sig, *args)


def test_power_loss_after_creates_covered_by_verdicts_walks(tmp_path: Path) -> None:
    """Creates covered by their clean verdicts, never recorded: the verdicts are
    committed, not fsynced (the background sync 60 s away), so the watermark never
    passed them; a power cut drops them and the walk journals every file."""
    src, mnt, disk, statefs = (tmp_path / n for n in ("src", "mnt", "disk", "statefs"))
    for p in (src, mnt, disk, statefs):
        p.mkdir()
    state = statefs / "state"
    conf = safe_config(tmp_path, state, '[journal]\nsync_interval = "60s"\n')
    args = ("--config", str(conf))
    with cutfs(disk, statefs):
        with _warm(src, mnt, state, *args):
            pass  # the signature version, learnt and persisted at a clean stop
        sig = signature_version(state)
        with mounted(src, mnt, *args) as server:
            for i in range(FILES):
                (mnt / f"new{i}").write_bytes(b"created %d" % i)
            wait_until(lambda: _in_flight(mnt) == 0
                       and _gate(mnt)["pending_intents"] == 0, "every close scan committed")
            gate = _gate(mnt)
            # The route under test: most files covered by their verdicts, not recorded.
            assert gate["new_files_covered_by_verdict"] >= FILES // 2, gate
            _kill(server, mnt)
    with cutfs(disk, statefs):  # the cut: only what was fsynced came back
        lost = unaccounted(src, state, sig)
        assert len(lost) >= FILES // 2, f"the cut lost too little to show anything: {lost}"
        restarted_with_walk(src, mnt, state, sig, *args, "-v")


def test_creates_during_an_outage_get_an_entry_each(tree: Tree) -> None:
    """The embedded engine fails (an outage): no close scan can cover a new file, so
    each gets its record once its close scan gave up (before any listing of the journal:
    read from outside after a SIGKILL, which records nothing more)."""
    conf = safe_config(tree.root, tree.state)
    args = ("--config", str(conf), "-v")
    (tree.source / "warm").write_bytes(b"warm-up")
    with mounted(tree.source, tree.mountpoint, *args,
                 env={**os.environ, "VFILE_EMBEDDED_FAULT": "refuse"}) as server:
        for i in range(FILES):
            (tree.mountpoint / f"new{i}").write_bytes(b"created %d" % i)
        wait_until(lambda: _gate(tree.mountpoint)["pending_intents"] == 0
                   and _in_flight(tree.mountpoint) == 0, "every close scan gave up", SOON)
        _kill(server, tree.mountpoint)
    with Journal.open(tree.state, readonly=True) as j:
        missing = [f"new{i}" for i in range(FILES) if j.get_deferred(f"new{i}") is None]
    assert missing == []


def test_a_clean_stop_records_new_files_and_is_clean(tree: Tree) -> None:
    """A clean stop while a new file is unrecorded (held open, within the bound) makes
    its record before the stop is recorded as clean: the next start walks nothing,
    not even as after an unclean stop, and the file has its entry."""
    conf = safe_config(tree.root, tree.state)
    args = ("--config", str(conf), "-v")
    fd = -1
    try:
        with _warm(tree.source, tree.mountpoint, tree.state, *args):
            fd = os.open(tree.mountpoint / "db", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"page one\n")
            assert _gate(tree.mountpoint)["new_files_unrecorded"] == 1
            # The stop (unmount, SIGTERM) comes with the file still open.
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    sig = signature_version(tree.state)
    assert unaccounted(tree.source, tree.state, sig) == []
    with Journal.open(tree.state, readonly=True) as j:
        assert j.get_deferred("db") is not None
    with mounted(tree.source, tree.mountpoint, *args) as again:
        text = again.log()
    assert "stopped uncleanly" not in text
    assert "recovery walk" not in text


def test_a_reader_of_the_journal_sees_an_unrecorded_file(tree: Tree) -> None:
    """`vfile journal show` and `list` on a live mount: a new file held open (no record
    yet, within the bound) is recorded first, so the reader finds its entry."""
    conf = safe_config(tree.root, tree.state)
    args = ("--config", str(conf))
    with _warm(tree.source, tree.mountpoint, tree.state, *args):
        fd = os.open(tree.mountpoint / "db", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"page one\n")
            assert _gate(tree.mountpoint)["new_files_unrecorded"] == 1
            shown = cli("journal", "show", "db", "--mount", str(tree.mountpoint))
            assert shown.returncode == 0, shown.stderr
            assert _gate(tree.mountpoint)["new_files_unrecorded"] == 0
            assert "db" in {r["path"] for r in journal_rows(tree.mountpoint)}
        finally:
            os.close(fd)
