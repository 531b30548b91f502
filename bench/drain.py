"""Drain throughput against `clamdscan --fdpass`, and quiesce time with blocked opens.

One run, same files, same clamd:

1. N small files (default 10,000 of 1-4 KiB, `--quick`: 1,000) plus a few
   large ones (4 x 16 MiB) of distinct random content; a real clamd on a
   unix socket with its clean-file cache off (`DisableCache yes`), so no
   phase profits from another one's scans.
2. `clamdscan --fdpass` over the directory (a temporary config pointing at
   the same clamd): the reference time.
3. A real vfile mount on that clamd: a window is opened (`quiesce`), every
   file is opened through the mount (deferred: reason `window`), and the
   window is closed with the drain's rate set as asked; the time from
   `resume` until the drain resolved every entry is the drain time. This is
   done twice: with the default rate limit (DEFAULT_FILES_PER_S) and with the
   rate set to unlimited (`vfile drain MNT rate --files-per-s 1e6`, the most b27 allows). Between
   the two, every file is touched (a new ctime: a new identity, so cached
   verdicts do not count).
4. Quiesce: a second mount on the built-in appliance, black-holed; Q opens
   (default 64) wait on it with a 30 s deadline; `vfile quiesce` is timed, and
   so is the moment the last blocked open returned.

`ratio_vs_clamdscan` = unlimited drain time / clamdscan time; issue 20's aim is a
drain at >= 0.9x clamdscan's speed, i.e. a ratio <= 1.11. `rate_honoured`: the
default-rate run did no more files than the token bucket allows: its initial
burst (one second's worth) plus the rate times the drain's time, with 5 % slack.

    .venv/bin/python bench/drain.py --quick [--json out.json]
    .venv/bin/python bench/drain.py --scale      # 100,000 small files, no large ones
    .venv/bin/python bench/drain.py --scale --files 5000 --profile /tmp/drain.stacks

Also reported: the CPU time per drained file of the server and of clamd, and
clamd's under clamdscan (load-independent, unlike the ratio on a shared
machine); `--profile` samples the server with py-spy (`pip install py-spy`)
during the unlimited drain into collapsed stacks; `--strace FILE` counts the
server's syscalls then (`strace -c`: per drained file, load-independent);
`--server-log FILE` keeps the server's log. The trio thread's own CPU and the
journal's transactions during the drain are reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/, whose journal.py would shadow the journal package.
sys.path[:] = [str(ROOT), str(ROOT / "tests"),
               *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]
from mounting import mounted, stop_process, vfile_cmd  # type: ignore[import-not-found]  # noqa: E402
from servers import CLAMD, make_samples, wait_ready  # type: ignore[import-not-found]  # noqa: E402

from vfile import control  # noqa: E402
from vfile.filter.drain import DEFAULT_FILES_PER_S  # noqa: E402

LARGE = 4
LARGE_SIZE = 16 << 20
OPENERS = 32


def make_files(src: Path, n: int, large: int = LARGE) -> int:
    rng = random.Random(42)
    total = 0
    for i in range(n):
        d = src / f"d{i // 1000:03d}"
        d.mkdir(exist_ok=True)
        data = rng.randbytes(rng.randint(1024, 4096))
        (d / f"f{i:05d}.bin").write_bytes(data)
        total += len(data)
    for i in range(large):
        (src / f"large{i}.bin").write_bytes(rng.randbytes(LARGE_SIZE))
        total += LARGE_SIZE
    return total


def all_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file())


def start_clamd(tmp: Path, sigdir: Path, scratch: Path | None = None
                ) -> subprocess.Popen[bytes]:
    """clamd as tests/servers.py runs it, on a unix socket, with its cache off; its
    TemporaryDirectory (a directory made and removed per scan) is `scratch` or `tmp`."""
    sock = tmp / "clamd.sock"
    conf = tmp / "clamd.conf"
    conf.write_text(f"Foreground yes\nLocalSocket {sock}\nDatabaseDirectory {sigdir}\n"
                    f"LogFile {tmp / 'clamd.log'}\nTemporaryDirectory {scratch or tmp}\n"
                    "User root\n"
                    "MaxThreads 8\nSelfCheck 3600\nDisableCache yes\n"
                    "MaxFileSize 100M\nMaxScanSize 400M\nStreamMaxLength 100M\n")
    proc = subprocess.Popen([CLAMD, "--foreground",
                             f"--config-file={conf}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_ready(proc, [(str(sock), b"zPING\0", b"PONG")], [tmp / "clamd.log"], "clamd")
    return proc


def perf_record(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    """`perf record` (software clock, call graphs) of `pid` into `out` until SIGINT."""
    if out is None:
        return None
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "997", "-g",
                            "-p", str(pid), "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # perf attaches
    return rec


def stop_recording(rec: subprocess.Popen[bytes] | None) -> None:
    if rec is not None:
        rec.send_signal(signal.SIGINT)
        rec.wait(120)


def time_clamdscan(sock: Path, src: Path, tmp: Path, clamd_pid: int,
                   perf: Path | None = None) -> tuple[float, float]:
    """Seconds `clamdscan --fdpass` takes over `src`, and clamd's CPU ms per file meanwhile
    (`perf`: clamd's profile then, see `perf_record`)."""
    conf = tmp / "clamdscan.conf"
    conf.write_text(f"LocalSocket {sock}\n")
    rec = perf_record(clamd_pid, perf)
    cpu = cpu_seconds(clamd_pid)
    t = time.perf_counter()
    res = subprocess.run(["clamdscan", "--fdpass", "--no-summary", f"--config-file={conf}",
                          str(src)], capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    clamd_cpu = cpu_seconds(clamd_pid) - cpu
    stop_recording(rec)
    if res.returncode != 0:
        raise RuntimeError(f"clamdscan failed ({res.returncode}): {res.stdout[-2000:]}"
                           f"{res.stderr[-2000:]}")
    return took, clamd_cpu * 1000 / len(all_files(src))


def ctl(mnt: Path, cmd: str, args: dict[str, Any] | None = None) -> Any:
    return control.call(mnt, cmd, args, timeout=120)


def wait_for(cond: Callable[[], bool], what: str, deadline: float,
             poll: float = 0.02) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting until {what}")
        time.sleep(poll)


def open_all(paths: list[Path]) -> None:
    def one(p: Path) -> None:
        os.close(os.open(p, os.O_RDONLY))

    with ThreadPoolExecutor(OPENERS) as pool:
        list(pool.map(one, paths))


def py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Sample the server's Python stacks (collapsed, one line per stack) until SIGINT."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate",
                             "250", "--nonblocking", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    """The 1-minute load average (other people's runs on a shared machine)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def main_thread_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds so far of a process's main thread (the server's trio
    thread; the rest of its CPU is the journal writer's and other worker threads')."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def drain_once(mnt: Path, src: Path, n: int, files_per_s: float, *,
               pids: tuple[int, int], profile: tuple[int, Path] | None = None,
               strace: Path | None = None, perf: Path | None = None) -> dict[str, Any]:
    """Defer every file through a window, then time the drain after `resume`.
    `pids`: (server, clamd), whose CPU time per drained file is reported.
    `profile`: (server pid, output file): py-spy samples the server during the drain.
    `strace`: `strace -c` counts the server's syscalls during the drain into this file
    (instead of py-spy; both slow the server down). `perf`: clamd's profile during the
    drain (`perf_record`)."""
    ctl(mnt, "drain", {"action": "pause"})
    ctl(mnt, "quiesce", {"max": 3600})
    t = time.perf_counter()
    open_all([mnt / p.relative_to(src) for p in all_files(src)])
    deferring = time.perf_counter() - t
    deferred = ctl(mnt, "status")["journal"]["deferred"]
    if deferred != n:
        raise RuntimeError(f"expected {n} deferred entries, the journal has {deferred}")
    ctl(mnt, "drain", {"action": "rate", "files_per_s": files_per_s,
                       "bytes_per_s": 1e12 if files_per_s >= 1e6 else None})
    before = sum(ctl(mnt, "drain")["done"].values())
    txns = ctl(mnt, "status")["journal"]["durability"]
    spy = None if profile is None else py_spy(*profile)
    if strace is not None:  # counts every syscall of every server thread
        spy = subprocess.Popen(["strace", "-f", "-c", "-o", str(strace), "-p", str(pids[0])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if spy is not None:
        time.sleep(1)  # py-spy attaches
    rec = perf_record(pids[1], perf)
    cpu = [cpu_seconds(pid) for pid in pids]
    trio_cpu = main_thread_cpu(pids[0])
    load_before = loadavg()
    t = time.perf_counter()
    ctl(mnt, "resume")
    ctl(mnt, "drain", {"action": "resume"})
    # Polled every 0.1 s: at 50/s the control calls took about 5 % of the server's time
    # (py-spy), which the drain does not spend when nobody watches.
    wait_for(lambda: sum(ctl(mnt, "drain")["done"].values()) - before >= n, "drained",
             3600, poll=0.1)
    took = time.perf_counter() - t
    load_after = loadavg()
    server_cpu, clamd_cpu = (cpu_seconds(pid) - c for pid, c in zip(pids, cpu, strict=True))
    trio_user, trio_sys = (b - a for a, b in zip(trio_cpu, main_thread_cpu(pids[0]),
                                                  strict=True))
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    stop_recording(rec)
    stats = ctl(mnt, "status")
    txns_after = stats["journal"]["durability"]
    if stats["journal"]["deferred"] != 0 or stats["drain"]["done"]["error"]:
        raise RuntimeError(f"drain left {stats['journal']['deferred']} entries, "
                           f"{stats['drain']['done']['error']} errors")
    return {"seconds": round(took, 3), "files_per_s": round(n / took, 1),
            "defer_seconds": round(deferring, 3),
            # the machine's 1-minute load average as the drain began and ended
            "loadavg": [load_before, load_after],
            "server_cpu_ms_per_file": round(server_cpu * 1000 / n, 3),
            # journal write transactions during the drain, and the operations they carried
            "journal_transactions": txns_after["batches"] - txns["batches"],
            "journal_ops": txns_after["ops"] - txns["ops"],
            "clamd_cpu_ms_per_file": round(clamd_cpu * 1000 / n, 3),
            # the trio thread's part of server_cpu_ms_per_file: [user, system]
            "trio_thread_cpu_ms_per_file": [round(trio_user * 1000 / n, 3),
                                            round(trio_sys * 1000 / n, 3)]}


def quiesce_blocked(tmp: Path, blocked: int) -> dict[str, float]:
    root = tmp / "q"
    src, mnt = root / "src", root / "mnt"
    src.mkdir(parents=True)
    mnt.mkdir()
    for i in range(blocked):
        (src / f"b{i}.txt").write_text(f"blocked {i}\n")
    sock, fault = root / "app.sock", root / "fault"
    fault.write_text("none")
    app = subprocess.Popen(vfile_cmd("appliance", "serve", "--listen", f"unix://{sock}",
                                     "--fault-file", str(fault)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        wait_ready(app, [(str(sock), b"zPING\0", b"PONG")], [], "built-in appliance")
        conf = root / "vfile.toml"
        conf.write_text(f'[mount]\nappliances = ["clamd://{sock}"]\n'
                        f'state_dir = "{root / "state"}"\n'
                        '[pool]\nattempt_timeout = "30s"\nretries = 0\n'
                        '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                        'deadline = "30s"\nattempt_timeout = "30s"\nretries = 0\n')
        with mounted(src, mnt, "--config", str(conf)):
            fault.write_text("blackhole")
            app.send_signal(10)  # SIGUSR1: re-read the fault
            time.sleep(0.3)
            def open_one(path: Path) -> float:
                os.close(os.open(path, os.O_RDONLY))
                return time.perf_counter()

            with ThreadPoolExecutor(blocked) as pool:
                futures = [pool.submit(open_one, mnt / f"b{i}.txt") for i in range(blocked)]
                wait_for(lambda: ctl(mnt, "status")["gate"]["in_flight"] >= blocked,
                         "every open is blocked", 30)
                t = time.perf_counter()
                reply = ctl(mnt, "quiesce", {"max": 60})
                returned = time.perf_counter() - t
                last = max(f.result(timeout=30) for f in futures) - t
            ctl(mnt, "resume")
            fault.write_text("refuse")
            app.send_signal(10)
        return {"blocked_opens": blocked, "quiesce_seconds": round(returned, 4),
                "server_side_seconds": reply["took_s"],
                "last_open_returned_seconds": round(last, 4)}
    finally:
        stop_process(app)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 small files instead of 10,000")
    ap.add_argument("--files", type=int, help="number of small files")
    ap.add_argument("--scale", action="store_true",
                    help="100,000 small files and no large ones (issue 20's drain goal)")
    ap.add_argument("--no-quiesce", action="store_true", help="skip the quiesce measure")
    ap.add_argument("--blocked", type=int, default=64, help="blocked opens for quiesce")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    ap.add_argument("--strace", type=Path,
                    help="strace -c the server during the unlimited drain; counts here")
    ap.add_argument("--server-log", type=Path, help="keep the mount server's log here")
    ap.add_argument("--clamd-perf", type=Path,
                    help="perf record clamd during the unlimited drain and the second "
                         "clamdscan: DIR/drain.data, DIR/clamdscan.data")
    ap.add_argument("--profile", type=Path,
                    help="py-spy the server during the unlimited drain; collapsed stacks here")
    args = ap.parse_args()
    n_small = args.files or (100_000 if args.scale else 1000 if args.quick else 10_000)
    large = 0 if args.scale else LARGE
    n = n_small + large
    tmp = Path(tempfile.mkdtemp(prefix="vfile-bench-drain-"))
    try:
        src, mnt = tmp / "src", tmp / "mnt"
        src.mkdir()
        mnt.mkdir()
        total = make_files(src, n_small, large)
        samples = make_samples(tmp / "samples")
        (tmp / "clamd").mkdir()
        clamd = start_clamd(tmp / "clamd", samples.sigdir)
        try:
            sock = tmp / "clamd" / "clamd.sock"
            clamdscan_s, clamd_ms = time_clamdscan(sock, src, tmp, clamd.pid)
            conf = tmp / "vfile.toml"
            conf.write_text(f'[mount]\nappliances = ["clamd://{sock}"]\n'
                            f'state_dir = "{tmp / "state"}"\n'
                            '[pool]\nattempt_timeout = "30s"\n'
                            '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                            'deadline = "60s"\nattempt_timeout = "30s"\nmax_size = 0\n')
            with mounted(src, mnt, "--config", str(conf), log_path=args.server_log) as server:
                wait_for(lambda: ctl(mnt, "status")["appliances"][0]["healthy"],
                         "the mount sees clamd", 30)
                pids = (server.proc.pid, clamd.pid)
                limited = drain_once(mnt, src, n, DEFAULT_FILES_PER_S, pids=pids)
                for p in all_files(src):
                    os.utime(p)  # new ctime: new identities, cached verdicts do not apply
                spied = None if args.profile is None else (server.proc.pid, args.profile)
                perf = args.clamd_perf
                if perf is not None:
                    perf.mkdir(parents=True, exist_ok=True)
                unlimited = drain_once(mnt, src, n, 1e6, pids=pids, profile=spied,
                                       strace=args.strace,
                                       perf=perf and perf / "drain.data")
            clamdscan_again, clamd_ms_again = time_clamdscan(
                sock, src, tmp, clamd.pid, perf and perf / "clamdscan.data")
        finally:
            stop_process(clamd)
        quiesce = None if args.no_quiesce else quiesce_blocked(tmp, args.blocked)
        # Before the clean-up: removing 100,000 files takes minutes on a busy disk.
        ref = min(clamdscan_s, clamdscan_again)
        result = {
            "files": n, "small_files": n_small, "large_files": large, "bytes": total,
            "clamdscan_fdpass_seconds": [round(clamdscan_s, 3), round(clamdscan_again, 3)],
            "clamdscan_clamd_cpu_ms_per_file": [round(clamd_ms, 3), round(clamd_ms_again, 3)],
            "drain_default_rate": {**limited, "rate_files_per_s": DEFAULT_FILES_PER_S},
            "drain_unlimited": unlimited,
            "ratio_vs_clamdscan": round(unlimited["seconds"] / ref, 3),
            "ratio_vs_clamdscan_default_rate": round(limited["seconds"] / ref, 3),
            "speed_vs_clamdscan": round(ref / unlimited["seconds"], 3),
            # The bucket starts full (one second's worth): n files may take (n - rate) / rate s.
            "rate_honoured": n <= DEFAULT_FILES_PER_S * (1 + limited["seconds"]) * 1.05,
            "quiesce": quiesce,
        }
        print(f"{'what':<34}{'seconds':>10}{'files/s':>10}")
        print(f"{'clamdscan --fdpass (best of 2)':<34}{ref:>10.2f}{n / ref:>10.0f}")
        print(f"{'drain, default rate':<34}{limited['seconds']:>10.2f}"
              f"{limited['files_per_s']:>10.0f}")
        print(f"{'drain, unlimited':<34}{unlimited['seconds']:>10.2f}"
              f"{unlimited['files_per_s']:>10.0f}")
        print(f"CPU ms per file: server {unlimited['server_cpu_ms_per_file']}, clamd "
              f"{unlimited['clamd_cpu_ms_per_file']} (drain, unlimited); clamd "
              f"{min(clamd_ms, clamd_ms_again):.3f} (clamdscan)")
        print("server's trio thread, [user, system] ms per file (drain, unlimited):",
              unlimited["trio_thread_cpu_ms_per_file"])
        print(f"load average during the drains: default rate {limited['loadavg']}, "
              f"unlimited {unlimited['loadavg']}")
        print(f"journal: {unlimited['journal_ops']} operations in "
              f"{unlimited['journal_transactions']} transactions (drain, unlimited)")
        print(f"ratio_vs_clamdscan {result['ratio_vs_clamdscan']}  (default rate: "
              f"{result['ratio_vs_clamdscan_default_rate']})")
        print(f"speed_vs_clamdscan {result['speed_vs_clamdscan']} (aim >= 0.9); rate honoured: "
              f"{result['rate_honoured']}")
        if quiesce is not None:
            print(f"quiesce with {quiesce['blocked_opens']} blocked opens: "
                  f"{quiesce['quiesce_seconds'] * 1000:.0f} ms (last open back after "
                  f"{quiesce['last_open_returned_seconds'] * 1000:.0f} ms)")
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
