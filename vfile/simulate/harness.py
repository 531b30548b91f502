"""The processes a simulation runs, and taking them down again whatever happens.

- `ApplianceProcess`: `vfile appliance serve` (the built-in appliance) or
  `vfile appliance proxy` in front of a given appliance, started with a
  `--fault-file`; `set_fault()` writes the file and sends SIGUSR1.
- `MountProcess`: a real `vfile mount --foreground` server for one mode,
  waited for in /proc/mounts; `close()` unmounts (`fusermount3 -u`, lazily if
  the mount is busy) and stops the server.

Both are context managers; leaving them never leaves a mount or a process
behind (terminate, then kill). Sockets are unix sockets or 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from vfile import control
from vfile.mount import is_vfile_mount
from vfile.scanner.urls import parse_appliance_url

START_DEADLINE = 30.0
STOP_DEADLINE = 15.0


def vfile_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vfile", *args]


def _stop(proc: subprocess.Popen[bytes], deadline: float = STOP_DEADLINE) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(deadline)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ApplianceProcess:
    """The appliance the mounts talk to, with a switchable fault."""

    def __init__(self, workdir: Path, appliance: str, signatures: Path | None) -> None:
        self.workdir = workdir
        self.fault_file = workdir / "fault"
        self.fault_file.write_text("none\n")
        self.log_path = workdir / "appliance.log"
        sock = workdir / "appliance.sock"
        if appliance == "builtin":
            argv = vfile_argv("appliance", "serve", "--listen", f"unix://{sock}",
                              "--fault-file", str(self.fault_file))
            if signatures is not None:
                argv += ["--signatures", str(signatures)]
            self.url = f"clamd://{sock}"
            self.description = "vfile's built-in appliance (`vfile appliance serve`)"
        else:
            target = parse_appliance_url(appliance)
            if target.kind == "icap":
                # ICAP needs host:port in its URL: the proxy listens on loopback TCP.
                argv = vfile_argv("appliance", "proxy", "--listen", "tcp://127.0.0.1:0",
                                  "--upstream", appliance, "--fault-file", str(self.fault_file))
            else:
                argv = vfile_argv("appliance", "proxy", "--listen", f"unix://{sock}",
                                  "--upstream", appliance, "--fault-file", str(self.fault_file))
            self.url = ""  # known once the proxy says where it listens
            self.description = f"{appliance} behind `vfile appliance proxy`"
        self._appliance = appliance
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log)
        try:
            line = self._first_line()
            if not self.url:
                self.url = self._url_from(line)
        except BaseException:
            self.close()
            raise

    def _first_line(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + START_DEADLINE
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError(f"the appliance did not start; see {self.log_path}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the appliance exited with {self.proc.wait()}; "
                                   f"see {self.log_path}")
            buf += chunk
        return buf.split(b"\n", 1)[0].decode(errors="replace")

    def _url_from(self, line: str) -> str:
        # "proxy listening on tcp://127.0.0.1:PORT -> upstream" / "... on unix:///path -> ..."
        bound = line.split(" on ", 1)[1].split(" ", 1)[0]
        target = parse_appliance_url(self._appliance)
        if bound.startswith("unix://"):
            return f"clamd://{bound[len('unix://'):]}"
        hostport = bound[len("tcp://"):]
        return f"icap://{hostport}/{target.service}" if target.kind == "icap" \
            else f"clamd://{hostport}"

    def set_fault(self, fault: str) -> None:
        self.fault_file.write_text(fault + "\n")
        self.proc.send_signal(signal.SIGUSR1)

    def close(self) -> None:
        _stop(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> ApplianceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MountProcess:
    """A `vfile mount --foreground` server for one mode."""

    def __init__(self, source: Path, mountpoint: Path, *, config: Path, appliance_url: str,
                 state_dir: Path, log_path: Path) -> None:
        self.source = source
        self.mountpoint = Path(os.path.realpath(mountpoint))
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        argv = vfile_argv("mount", "--foreground", "--config", str(config),
                          "--appliance", appliance_url, "--state-dir", str(state_dir),
                          "--", str(source), str(self.mountpoint))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log)
        try:
            self._wait_mounted()
        except BaseException:
            self.close()
            raise

    def _wait_mounted(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while not is_vfile_mount(str(self.mountpoint)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"vfile mount exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vfile did not mount within {START_DEADLINE:g}s; "
                                   f"see {self.log_path}")
            time.sleep(0.02)
        # The control socket comes up just before the mount: make sure it answers.
        while True:
            try:
                self.call("status")
                return
            except control.ControlError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """A control-plane command, exactly as `vfile status/quiesce/resume/...` sends it."""
        return control.call(str(self.mountpoint), cmd, args, timeout=timeout)

    def close(self) -> None:
        if is_vfile_mount(str(self.mountpoint)):
            res = subprocess.run(["fusermount3", "-u", str(self.mountpoint)],
                                 capture_output=True, check=False)
            if res.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, check=False)
        try:
            self.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            _stop(self.proc)
        self._log.close()

    def __enter__(self) -> MountProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def interrupt_as_exception() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so `finally` blocks take the mounts down."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
