"""Mount vfile for a test in a subprocess, and always take it down again.

    with mounted(src, mnt, "-o", "allow_other") as server:
        ... use mnt ...

`mounted` runs ``python -m vfile mount --foreground [extra] SRC MNT``, waits
until MNT shows up in /proc/mounts, fails at once (with the server's stderr)
if the server dies first, and in `finally` unmounts (lazily, so a busy or
dead mount cannot leak) and stops the server. Other tests reuse it with their
own extra arguments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vfile.mount import parse_mounts

START_DEADLINE = 30.0
TRACEBACK = "Traceback (most recent call last)"
STOP_DEADLINE = 15.0


def is_mounted(mountpoint: Path | str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(m == str(mountpoint) for m, _ in parse_mounts(f.read()))


def vfile_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vfile", *args]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    source: Path
    mountpoint: Path
    log_path: Path

    def log(self) -> str:
        """The server's log so far. A running server writes its log lines on a thread
        (vfile.observe.logqueue): wait until every line it accepted before now is in
        the file, so a test never reads a log that lags behind what happened."""
        if self.proc.poll() is None and is_mounted(self.mountpoint):
            _wait_log_written(self.mountpoint)
        return self.log_path.read_text(errors="replace")

    def kill(self, deadline: float = 30) -> None:
        """SIGKILL the server (a crash) and wait until it is gone; its mount stays
        behind, dead (ENOTCONN), until `force_unmount` or the `mounted` exit."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(deadline)


def _wait_log_written(mountpoint: Path, deadline: float = 15.0) -> None:
    """Until the server has written every log line accepted before this call (best
    effort: a server that cannot answer is read as it is)."""
    from vfile import control  # the client is trio-free and cheap

    end = time.monotonic() + deadline
    try:
        logging = control.call(mountpoint, "status", timeout=deadline)["logging"]
        if not logging:
            return
        target = logging["accepted"]
        while logging["written"] < target and time.monotonic() < end:
            time.sleep(0.02)
            logging = control.call(mountpoint, "status", timeout=deadline)["logging"]
    except (OSError, control.ControlError, KeyError, TypeError):
        return


def force_unmount(mountpoint: Path | str) -> None:
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                       capture_output=True)


@contextmanager
def mounted(source: Path, mountpoint: Path, *extra: str,
            env: dict[str, str] | None = None, nofile: int | None = None,
            log_path: Path | None = None, tracebacks_expected: bool = False
            ) -> Iterator[Server]:
    """`nofile`: the server's soft and hard descriptor limit (a container's).
    `log_path`: where the server's stderr goes (default: a temporary file).

    Like S3QL's log checker: a test whose server logged a traceback fails, even if
    everything it asserted held (a handler that crashed is a bug the test did not
    look for), unless it says `tracebacks_expected`."""
    source, mountpoint = Path(os.path.realpath(source)), Path(os.path.realpath(mountpoint))
    if log_path is None:
        fd, log_name = tempfile.mkstemp(prefix="vfile-server-", suffix=".log")
        log_path = Path(log_name)
    else:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "wb") as logf:
        # prlimit(1) sets the limit and execs the server (same pid).
        limit = [] if nofile is None else ["prlimit", f"--nofile={nofile}:{nofile}"]
        proc = subprocess.Popen([*limit, *vfile_cmd("mount", "--foreground", *extra, "--",
                                                    str(source), str(mountpoint))],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                env={**os.environ, **(env or {})})
    server = Server(proc, source, mountpoint, log_path)
    body_passed = False
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not is_mounted(mountpoint):
            if proc.poll() is not None:
                raise AssertionError(f"vfile server exited with {proc.returncode} before "
                                     f"mounting:\n{server.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"vfile did not mount within {START_DEADLINE}s:\n"
                                     f"{server.log()}")
            time.sleep(0.02)
        yield server
        body_passed = True
    finally:
        force_unmount(mountpoint)
        stop_process(proc, STOP_DEADLINE)
        text = server.log() if log_path.exists() else ""
        log_path.unlink(missing_ok=True)
    if body_passed and not tracebacks_expected and TRACEBACK in text:
        raise AssertionError(f"the vfile server logged a traceback:\n{text[-6000:]}")


def stop_process(proc: subprocess.Popen[bytes], deadline: float = 10.0) -> None:
    """Stop a child we started: SIGTERM, then SIGKILL if it does not go within
    `deadline`. A child that leads its own process group (`start_new_session`: the
    appliances and servers) is stopped with its whole group, woken first in case a
    test left it stopped, and any stray child of it is killed after."""
    try:
        group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        group = False

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGCONT)
        send(signal.SIGTERM)
        try:
            proc.wait(deadline)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(deadline)
    if group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray children


def server_pids(mountpoint: Path) -> list[int]:
    """Mount servers (`vfile mount --foreground`) whose command line names `mountpoint`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.fsencode(mountpoint) in cmdline and b"--foreground" in cmdline:
                pids.append(int(entry))
    return pids


def wait_gone(mountpoint: Path, deadline: float = 15.0) -> bool:
    """Wait until no mount server for `mountpoint` is left; False on timeout."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not server_pids(mountpoint):
            return True
        time.sleep(0.05)
    return False


def wait_for(what: str, check: Callable[[], object], deadline: float = 15.0) -> None:
    """Poll `check` until it is true; fail naming `what` after `deadline` seconds (a hang)."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(0.05)
