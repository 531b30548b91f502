"""clamd's CPU per file under each way of asking it: what the drain's access pattern costs.

The drain of small files shares two cores with clamd, so clamd's CPU per file is
part of the drain's speed. `clamdscan --fdpass` (no `--multiscan`) asks for one
file at a time on a new connection (clamdscan/proto.c `serial_callback`: connect,
`zFILDES` with the descriptor, one reply, close); the drain pipelines batches of
FILDES requests on IDSESSION connections (scanner/clamd_session.py), so clamd
scans several at once on its threads. This bench asks one clamd (cache off, as
bench/drain.py runs it) for the same N small files in each pattern, a plain Python
client with no vfile in between, and reports clamd's CPU ms per file, its context
switches per file and the wall time. Patterns run in turn, `--rounds` times each
(interleaved: the machine's load moves), and `clamdscan --fdpass` itself too.

    .venv/bin/python bench/clamd_access.py [--files 5000] [--rounds 2] [--json out]

Patterns: `clamdscan` (the real client), `conn-per-file` (what clamdscan does, from
Python), `session-1` (one IDSESSION connection, one request at a time), `window-K`
(one session, K requests outstanding: a new one as each reply comes), `LxB` (L
lanes, each sending B requests at once and reading their B replies before the
next B: the drain's batches; the drain runs 2x16).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT), str(ROOT / "tests"),
               *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]
from servers import make_samples  # type: ignore[import-not-found]  # noqa: E402

from bench.drain import all_files, cpu_seconds, loadavg, make_files, start_clamd  # noqa: E402
from vfile.scanner import fdsend  # noqa: E402

DEFAULT_PATTERNS = "clamdscan,conn-per-file,session-1,window-2,window-4,2x16,1x16,1x64"


def ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of `pid` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _send_fildes(sock: socket.socket, fd: int) -> None:
    sock.sendmsg([b"zFILDES\0", b"\0"],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])


class _Replies:
    """Reads NUL-terminated replies off a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._buf = sock, b""

    def next(self) -> bytes:
        while b"\0" not in self._buf:
            data = self._sock.recv(65536)
            if not data:
                raise RuntimeError("clamd closed the connection")
            self._buf += data
        reply, _, self._buf = self._buf.partition(b"\0")
        if not reply.endswith((b"OK", b"FOUND")):
            raise RuntimeError(f"clamd: {reply!r}")
        return reply


def _session(sock_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(sock_path))
    sock.sendall(b"zIDSESSION\0")
    return sock


def conn_per_file(sock_path: Path, fds: list[int]) -> None:
    for fd in fds:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_path))
            _send_fildes(sock, fd)
            _Replies(sock).next()


def windowed(sock_path: Path, fds: list[int], window: int) -> None:
    with _session(sock_path) as sock:
        replies = _Replies(sock)
        outstanding = 0
        for fd in fds:
            if outstanding == window:
                replies.next()
                outstanding -= 1
            _send_fildes(sock, fd)
            outstanding += 1
        for _ in range(outstanding):
            replies.next()


def batches(sock_path: Path, fds: list[int], size: int) -> None:
    with _session(sock_path) as sock:
        replies = _Replies(sock)
        for i in range(0, len(fds), size):
            chunk = fds[i:i + size]
            if not fdsend.available() or fdsend.send_many(sock, chunk) != (len(chunk), 0):
                raise RuntimeError("sendmmsg did not take the batch whole")
            for _ in chunk:
                replies.next()


def lanes(sock_path: Path, fds: list[int], n_lanes: int, size: int) -> None:
    """`n_lanes` threads taking batches of `size` off one shared list, as the drain's lanes."""
    chunks = [fds[i:i + size] for i in range(0, len(fds), size)]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def lane() -> None:
        try:
            with _session(sock_path) as sock:
                replies = _Replies(sock)
                while True:
                    with lock:
                        if not chunks:
                            return
                        chunk = chunks.pop()
                    fdsend.send_many(sock, chunk)
                    for _ in chunk:
                        replies.next()
        except BaseException as err:  # reported by the caller
            errors.append(err)

    threads = [threading.Thread(target=lane) for _ in range(n_lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_pattern(name: str, sock_path: Path, src: Path, tmp: Path) -> None:
    if name == "clamdscan":
        conf = tmp / "clamdscan.conf"
        conf.write_text(f"LocalSocket {sock_path}\n")
        subprocess.run(["clamdscan", "--fdpass", "--no-summary", f"--config-file={conf}",
                        str(src)], capture_output=True, check=True)
        return
    fds = [os.open(p, os.O_RDONLY) for p in all_files(src)]
    try:
        if name == "conn-per-file":
            conn_per_file(sock_path, fds)
        elif name == "session-1":
            windowed(sock_path, fds, 1)
        elif name.startswith("window-"):
            windowed(sock_path, fds, int(name.removeprefix("window-")))
        else:
            n_lanes, size = (int(x) for x in name.split("x"))
            if n_lanes == 1:
                batches(sock_path, fds, size)
            else:
                lanes(sock_path, fds, n_lanes, size)
    finally:
        for fd in fds:
            os.close(fd)


def measure(name: str, sock_path: Path, src: Path, tmp: Path, *, clamd_pid: int,
            n: int) -> dict[str, Any]:
    load = loadavg()
    cpu, switches = cpu_seconds(clamd_pid), ctx_switches(clamd_pid)
    t = time.perf_counter()
    run_pattern(name, sock_path, src, tmp)
    took = time.perf_counter() - t
    return {"pattern": name, "seconds": round(took, 3), "files_per_s": round(n / took),
            "clamd_cpu_ms_per_file": round((cpu_seconds(clamd_pid) - cpu) * 1000 / n, 3),
            "clamd_switches_per_file": round((ctx_switches(clamd_pid) - switches) / n, 2),
            "loadavg": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=5000, help="small files (1-4 KiB)")
    ap.add_argument("--rounds", type=int, default=2, help="times each pattern runs")
    ap.add_argument("--patterns", default=DEFAULT_PATTERNS, help="comma-separated")
    ap.add_argument("--burn", type=int, default=0,
                    help="busy-looping processes during the patterns (the drain's server "
                         "shares the cores with clamd: does that alone cost clamd CPU?)")
    ap.add_argument("--clamd-tmpdir", type=Path,
                    help="clamd's TemporaryDirectory (default: beside its socket, on the "
                         "disk): it makes and removes a directory there per scan")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    patterns = args.patterns.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="vfile-bench-clamd-"))
    clamd = None
    try:
        src = tmp / "src"
        src.mkdir()
        make_files(src, args.files, 0)
        samples = make_samples(tmp / "samples")
        (tmp / "clamd").mkdir()
        clamd = start_clamd(tmp / "clamd", samples.sigdir, args.clamd_tmpdir)
        sock_path = tmp / "clamd" / "clamd.sock"
        run_pattern("session-1", sock_path, src, tmp)  # warm the page cache and clamd
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                   for _ in range(args.burn)]
        try:
            rows = [measure(name, sock_path, src, tmp, clamd_pid=clamd.pid, n=args.files)
                    for _ in range(args.rounds) for name in patterns]
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()
    finally:
        if clamd is not None:
            clamd.terminate()
            clamd.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'pattern':<16}{'s':>8}{'files/s':>9}{'clamd CPU ms/file':>19}"
          f"{'clamd switches/file':>21}{'load':>7}")
    for row in rows:
        print(f"{row['pattern']:<16}{row['seconds']:>8.2f}{row['files_per_s']:>9}"
              f"{row['clamd_cpu_ms_per_file']:>19.3f}{row['clamd_switches_per_file']:>21.2f}"
              f"{row['loadavg']:>7.2f}")
    print(json.dumps(rows, indent=2))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
