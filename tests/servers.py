"""Real scan appliances for tests: clamd, c-icap and the built-in appliance.

Context managers start each server with a temporary configuration on
loopback / unix sockets under a temp dir, wait for it to answer (failing
loudly with its log if it does not within a deadline) and always stop it:

    with running_clamd(tmp) as clamd:        # clamd.tcp_url, clamd.unix_url
        with running_cicap(clamd.socket_path, tmp) as icap:   # icap.url
            ...
    async with running_builtin(tmp) as b:    # b.tcp_url, b.unix_url, b.appliance

The fixtures over them (`samples`, `clamd_server`, `cicap_server`,
`builtin`) are in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio
from mounting import stop_process

from vfile.scanner.builtin import BuiltinAppliance
from vfile.scanner.faults import Fault
from vfile.scanner.signatures import EICAR

CLAMD = "/usr/sbin/clamd"
CICAP = "/usr/bin/c-icap"
CICAP_MODULES = "/usr/lib/x86_64-linux-gnu/c_icap"
STARTUP_DEADLINE = 60.0
GENERATED_NAME = "Vfile.Test.Generated"
EICAR_HDB_NAME = "Vfile.Test.EICAR"
#: clamd appends this to names from non-official databases
UNOFFICIAL = ".UNOFFICIAL"


@dataclass(frozen=True)
class Samples:
    dir: Path
    sigdir: Path
    clean: Path
    eicar: Path
    generated: Path  # random bytes, matched by a generated .hdb line
    generated_name: str = GENERATED_NAME


def make_samples(root: Path) -> Samples:
    """Write sample files and a signature directory (.hdb) under `root`."""
    import hashlib

    root.mkdir(parents=True, exist_ok=True)
    sigdir = root / "sigs"
    sigdir.mkdir(exist_ok=True)
    clean = root / "clean.txt"
    clean.write_bytes(b"just a clean file\n" * 100)
    eicar = root / "eicar.com"
    eicar.write_bytes(EICAR)
    generated = root / "generated.bin"
    data = random.Random(1234).randbytes(100_000)
    generated.write_bytes(data)
    (sigdir / "vfile-test.hdb").write_text(
        f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{EICAR_HDB_NAME}\n"
        f"{hashlib.md5(data).hexdigest()}:{len(data)}:{GENERATED_NAME}\n")
    return Samples(root, sigdir, clean, eicar, generated)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(address: str | tuple[str, int], payload: bytes, until: bytes,
        timeout: float = 2.0) -> bytes:
    """Send `payload` to a unix socket path or (host, port); read until `until` is in
    the reply or the server closes."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(payload)
        out = b""
        while until not in out:
            data = s.recv(4096)
            if not data:
                break
            out += data
        return out


Probe = tuple[str | tuple[str, int], bytes, bytes]


def wait_ready(proc: subprocess.Popen[bytes], check: list[Probe], logs: list[Path],
               what: str) -> None:
    """Until every probe (address, payload, expected bytes) is answered; else stop
    `proc` and fail with the tail of its `logs`."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if all(exp in ask(addr, payload, exp) for addr, payload, exp in check):
                return
        except OSError as err:
            last = err
        time.sleep(0.05)
    text = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-4000:]}" for p in logs
                     if p.exists())
    stop_process(proc)
    raise RuntimeError(f"{what} did not come up within {STARTUP_DEADLINE}s "
                       f"(exit code {proc.poll()}, last error {last}):\n{text}")


@dataclass
class Daemon:
    """A server process in its own process group, its port and its log."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Clamd(Daemon):
    socket_path: str

    @property
    def tcp_url(self) -> str:
        return f"clamd://127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"clamd://{self.socket_path}"


@contextlib.contextmanager
def running_clamd(tmp: Path, sigdir: Path, *, stream_max: str = "10M",
                  extra: str = "") -> Iterator[Clamd]:
    """Run a real clamd (foreground) with `sigdir` as its database directory (and
    `extra` configuration lines)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sock = str(tmp / "clamd.sock")
    log = tmp / "clamd.log"
    conf = tmp / "clamd.conf"
    conf.write_text(
        "Foreground yes\n"
        f"LocalSocket {sock}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n"
        f"DatabaseDirectory {sigdir}\nStreamMaxLength {stream_max}\n"
        f"LogFile {log}\nPidFile {tmp / 'clamd.pid'}\nTemporaryDirectory {tmp}\n"
        "User root\nMaxThreads 8\nSelfCheck 3600\n" + extra)
    out = (tmp / "clamd.out").open("wb")
    proc = subprocess.Popen([CLAMD, "--foreground", f"--config-file={conf}"], stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    server = Clamd(proc, port, log, sock)
    try:
        wait_ready(proc, [(sock, b"zPING\0", b"PONG"), (("127.0.0.1", port), b"zPING\0", b"PONG")],
                    [log, tmp / "clamd.out"], "clamd")
        yield server
    finally:
        stop_process(proc)
        out.close()


@dataclass
class Cicap(Daemon):
    @property
    def url(self) -> str:
        return f"icap://127.0.0.1:{self.port}/avscan"


@contextlib.contextmanager
def running_cicap(clamd_socket: str, tmp: Path, *, max_object: str = "100M") -> Iterator[Cicap]:
    """Run a real c-icap with virus_scan + clamd_mod using the clamd at `clamd_socket`."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cicap-tmp").mkdir(exist_ok=True)
    port = free_port()
    log = tmp / "cicap-server.log"
    conf = tmp / "c-icap.conf"
    conf.write_text(
        f"PidFile {tmp / 'c-icap.pid'}\nCommandsSocket {tmp / 'c-icap.ctl'}\n"
        "Timeout 60\nStartServers 1\nMaxServers 1\nMinSpareThreads 4\nMaxSpareThreads 16\n"
        "ThreadsPerChild 16\nMaxRequestsPerChild 0\n"
        f"Port 127.0.0.1:{port}\nTmpDir {tmp / 'cicap-tmp'}\nDebugLevel 1\n"
        f"ModulesDir {CICAP_MODULES}\nServicesDir {CICAP_MODULES}\n"
        "TemplateDir /usr/share/c_icap/templates/\nTemplateDefaultLanguage en\n"
        "LoadMagicFile /etc/c-icap/c-icap.magic\n"
        f"ServerLog {log}\nAccessLog {tmp / 'cicap-access.log'}\n"
        "Module common clamd_mod.so\n"
        f"clamd_mod.ClamdSocket {clamd_socket}\n"
        "Service avscan virus_scan.so\n"
        "virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GRAPHICS STREAM DOCUMENT BINARY\n"
        "virus_scan.SendPercentData 0\nvirus_scan.Allow204Responces on\n"
        f"virus_scan.PassOnError off\nvirus_scan.MaxObjectSize {max_object}\n"
        "virus_scan.DefaultEngine clamd\n")
    out = (tmp / "cicap.out").open("wb")
    proc = subprocess.Popen([CICAP, "-N", "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    options = (f"OPTIONS icap://127.0.0.1:{port}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\n"
               "Encapsulated: null-body=0\r\n\r\n").encode()
    server = Cicap(proc, port, log)
    try:
        wait_ready(proc, [(("127.0.0.1", port), options, b"ISTag")], [log, tmp / "cicap.out"],
                    "c-icap")
        yield server
    finally:
        stop_process(proc)
        out.close()


@dataclass
class Builtin:
    appliance: BuiltinAppliance
    tcp_url: str
    unix_url: str
    socket_path: str


@contextlib.asynccontextmanager
async def running_builtin(tmp: Path, signatures_dir: Path | None = None,
                          fault: Fault | None = None) -> AsyncIterator[Builtin]:
    """Run the built-in appliance in-process on an ephemeral TCP port and a unix socket."""
    appliance = BuiltinAppliance(str(signatures_dir) if signatures_dir else None, fault)
    # unix socket paths are limited to 107 bytes: keep it short, not under tmp
    sockdir = tempfile.mkdtemp(prefix="vfb-")
    sock = os.path.join(sockdir, "builtin.sock")
    try:
        async with trio.open_nursery() as nursery:
            tcp = await nursery.start(appliance.serve, "tcp://127.0.0.1:0")
            await nursery.start(appliance.serve, f"unix://{sock}")
            try:
                yield Builtin(appliance, "clamd://" + tcp.removeprefix("tcp://"),
                              f"clamd://{sock}", sock)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
