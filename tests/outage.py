"""Outages for tests and bench/soak.py: an appliance and a fault proxy as processes.

    with running_appliance(sigdir) as app:             # app.url (clamd:///…sock)
        with running_proxy(app.url) as proxy:          # proxy.url; proxy.set_fault("reset")
            with mounted(src, mnt, "--appliance", proxy.url, ...):
                ...
    lost = unaccounted(src, state_dir, sig)            # files neither journaled nor clean

Both run as `python -m vfile appliance …` in their own process group (so a
mount under test never shares their event loop), on unix sockets in a short
temp directory, and are always stopped. `set_fault` writes the fault file,
sends SIGUSR1 and waits until the proxy logged the switch, so the fault is
in force when it returns.

`unaccounted` is the fail-safe promise as a check: every regular file in the
source has a journal entry or a clean verdict for its current identity at the
given signature version (what the mount would trust on the next open).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mounting import mounted, stop_process

from vfile import control
from vfile.journal import Journal
from vfile.journal.records import Identity

START_DEADLINE = 30.0


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], what: str,
              count: int = 1) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while log.read_text(errors="replace").count(text) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not report {text!r} (exit {proc.poll()}):\n"
                               + log.read_text(errors="replace")[-4000:])
        time.sleep(0.02)


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    fault_file: Path
    switches: int = 0
    reloads: int = 0

    def set_fault(self, fault: str) -> None:
        """Switch the fault (`none` clears it) and wait until it is in force."""
        self.fault_file.write_text(fault)
        self.switches += 1
        self.proc.send_signal(signal.SIGUSR1)
        _wait_for(self.log, "fault: ", self.proc, "fault switch", self.switches)

    def reload(self) -> None:
        """Reload the appliance's signatures (SIGHUP) and wait until it says it did."""
        self.reloads += 1
        self.proc.send_signal(signal.SIGHUP)
        _wait_for(self.log, "signatures reloaded", self.proc, "signature reload", self.reloads)


def _start(args: list[str], ready: str, sockdir: Path, url: str) -> Iterator[Proc]:
    log = sockdir / "log"
    fault_file = sockdir / "fault"
    fault_file.write_text("none")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vfile", "appliance", *args,
                                 "--fault-file", str(fault_file), "-v"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        _wait_for(log, ready, proc, args[0])
        yield Proc(proc, url, log, fault_file)
    finally:
        stop_process(proc)


def _running(args: list[str], ready: str, prefix: str, fault: str) -> Iterator[Proc]:
    """Start `vfile appliance ARGS` ("{sock}" in ARGS: its socket), healthy, then give
    it `fault` (waiting until the fault is in force)."""
    sockdir = Path(tempfile.mkdtemp(prefix=prefix))
    sock = str(sockdir / "s.sock")
    try:
        gen = _start([a.replace("{sock}", sock) for a in args], ready, sockdir,
                     f"clamd://{sock}")
        with contextlib.closing(gen):
            proc = next(gen)
            if fault != "none":
                proc.set_fault(fault)
            yield proc
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@contextlib.contextmanager
def running_appliance(sigdir: Path | None = None, fault: str = "none") -> Iterator[Proc]:
    """`vfile appliance serve` on a unix socket; `.url` is its clamd:// URL."""
    args = ["serve", "--listen", "unix://{sock}"]
    if sigdir is not None:
        args += ["--signatures", str(sigdir)]
    yield from _running(args, "listening on", "vfa-", fault)


@contextlib.contextmanager
def running_proxy(upstream: str, fault: str = "none") -> Iterator[Proc]:
    """`vfile appliance proxy` in front of `upstream`, on a unix socket."""
    yield from _running(["proxy", "--listen", "unix://{sock}", "--upstream", upstream],
                        "proxy listening on", "vfp-", fault)


def status(mountpoint: Path | str) -> dict[str, Any]:
    """`vfile status --json`, in-process (the same control call the CLI makes)."""
    result: dict[str, Any] = control.call(mountpoint, "status", timeout=20)
    return result


def write_config(path: Path, *, fail_mode: str = "safe", deadline: float = 0.5,
                 extra_profile: str = "", pool: str = "") -> Path:
    """A config with a fast-recovering pool (short breaker cooldown, quick probes)."""
    path.write_text(
        "[pool]\n"
        f"attempt_timeout = {min(deadline, 0.5)}\nretries = 0\nbreaker_failures = 2\n"
        'breaker_cooldown = "300ms"\nprobe_interval = "200ms"\n' + pool +
        "\n[[profile]]\n"
        f'name = "default"\nfail_mode = "{fail_mode}"\ndeadline = {deadline}\n'
        f"attempt_timeout = {min(deadline, 0.5)}\nretries = 0\n" + extra_profile)
    return path


def signature_version(state_dir: Path) -> str:
    """The signature version the mount last persisted (`last-signature-version`)."""
    try:
        return (state_dir / "last-signature-version").read_text().strip()
    except OSError:
        return ""


def deferred_paths(state: Path) -> list[str]:
    """The paths of the journal's deferred entries (read-only, beside a mount)."""
    with Journal.open(state, readonly=True) as j:
        return [e.path for e in j.list_deferred()]


def verdict_outcome(state: Path, source: Path, name: str, sig: str) -> str | None:
    """The stored verdict's outcome for the file `source/name` as it is now, or None."""
    with Journal.open(state, readonly=True) as j:
        v = j.get_verdict(Identity.from_stat(os.stat(source / name)), sig)
        return None if v is None else v.outcome


def unaccounted(source: Path, state_dir: Path, sig: str) -> list[str]:
    """Source files with neither a journal entry nor a clean verdict for their
    current identity at signature version `sig` (empty: nothing escaped).

    A file with several names (hard links) is accounted for by an entry under any of
    them: the drain scans the file by that name, and the verdict is for the file,
    so it covers every name (loss22: an exchange or a metadata change moves or makes
    the entry under one name while the test looked under another)."""
    journal = Journal.open(state_dir, readonly=True)
    try:
        deferred = {e.path for e in journal.list_deferred()}
        named: set[tuple[int, int]] = set()  # (st_dev, st_ino) of each file an entry names
        for rel in deferred:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(source, rel))
                named.add((st.st_dev, st.st_ino))
        missing = []
        for dirpath, _dirs, files in os.walk(source):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, source)
                try:
                    st = os.lstat(full)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode) or rel in deferred \
                        or (st.st_nlink > 1 and (st.st_dev, st.st_ino) in named):
                    continue
                verdict = journal.get_verdict(Identity.from_stat(st), sig) if sig else None
                if verdict is None or verdict.outcome != "clean":
                    missing.append(rel)
        return sorted(missing)
    finally:
        journal.close()


def restarted_with_walk(source: Path, mountpoint: Path, state: Path, sig: str,
                        *args: str) -> str:
    """Start the mount again after an unclean stop: the recovery walk must run before it
    serves, and leave no file unaccounted and the journal sound. Its log, returned."""
    with mounted(source, mountpoint, *args) as again:
        text = again.log()  # the walk runs before the mount serves
    assert "recovery walk" in text
    assert unaccounted(source, state, sig) == []
    with Journal.open(state, readonly=True) as j:
        assert j.check() == []
    return text
