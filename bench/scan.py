"""Scan latency and throughput per transport, against `clamdscan --fdpass` in the same run.

Starts a real clamd (TCP + unix socket), a real c-icap in front of it, and
the built-in appliance (as a subprocess, so it does not share the client's
event loop), then scans 4 KiB, 1 MiB and 32 MiB files of random bytes
sequentially through vfile's pool over each transport, and through
`clamdscan --fdpass` (a temporary config pointing at the same clamd). Prints
a table and JSON; `--json PATH` also writes the JSON. Latency is wall time
per file as the caller sees it; throughput is size / p50; `vs clamdscan`
is p50 / clamdscan's p50 (below 1 means faster than clamdscan, which pays
a process start per file).

    .venv/bin/python bench/scan.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import make_samples, running_cicap, running_clamd  # type: ignore[import-not-found]

from vfile.scanner.pool import Pool

SIZES = {"4KiB": 4096, "1MiB": 1 << 20, "32MiB": 32 << 20}
ROUNDS_FULL = {"4KiB": 200, "1MiB": 40, "32MiB": 8}
ROUNDS_QUICK = {"4KiB": 40, "1MiB": 10, "32MiB": 3}


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


async def time_pool(url: str, path: str, rounds: int) -> list[float]:
    pool = Pool([url], attempt_timeout=60)
    out = []
    v = await pool.scan_path(path)  # warm-up (and signature version)
    if not v.is_clean:
        raise RuntimeError(f"{url} on {path}: {v}")
    for _ in range(rounds):
        t = time.perf_counter()
        v = await pool.scan_path(path)
        out.append(time.perf_counter() - t)
        if not v.is_clean:
            raise RuntimeError(f"{url} on {path}: {v}")
    return out


def time_clamdscan(conf: str, path: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds + 1):
        t = time.perf_counter()
        r = subprocess.run(["clamdscan", "--fdpass", "--no-summary", f"--config-file={conf}", path],
                           capture_output=True, text=True, check=False)
        out.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise RuntimeError(f"clamdscan: {r.stdout} {r.stderr}")
    return out[1:]


def start_builtin(sock: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "vfile", "appliance", "serve", "--listen",
                             f"unix://{sock}", "--listen", "tcp://127.0.0.1:0"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    line = proc.stdout.readline().decode()  # "listening on tcp://127.0.0.1:PORT (...)"
    proc.tcp = line.split()[2]  # type: ignore[attr-defined]
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--json", dest="json_path", help="also write the JSON here")
    args = ap.parse_args()
    rounds = ROUNDS_QUICK if args.quick else ROUNDS_FULL
    tmp = Path(tempfile.mkdtemp(prefix="vfbench-"))
    samples = make_samples(tmp / "samples")
    files = {}
    for name, size in SIZES.items():
        p = tmp / f"file-{name}.bin"
        p.write_bytes(os.urandom(size))
        files[name] = str(p)
    results: list[dict[str, object]] = []
    with running_clamd(tmp / "clamd", samples.sigdir, stream_max="64M") as clamd, \
            running_cicap(clamd.socket_path, tmp / "cicap") as cicap:
        conf = tmp / "clamdscan.conf"
        conf.write_text(f"LocalSocket {clamd.socket_path}\n")
        builtin = start_builtin(str(tmp / "builtin.sock"))
        try:
            transports = {
                "clamd TCP INSTREAM": clamd.tcp_url,
                "clamd unix FILDES": clamd.unix_url,
                "ICAP (c-icap+clamd)": cicap.url,
                "built-in TCP INSTREAM": "clamd://" + builtin.tcp.removeprefix("tcp://"),  # type: ignore[attr-defined]
                "built-in unix FILDES": f"clamd://{tmp / 'builtin.sock'}",
            }
            for size_name, path in files.items():
                base = time_clamdscan(str(conf), path, rounds[size_name])
                base_p50 = pct(base, 0.5)
                rows = {"clamdscan --fdpass": base}
                for tname, url in transports.items():
                    rows[tname] = trio.run(time_pool, url, path, rounds[size_name])
                for tname, lat in rows.items():
                    p50 = pct(lat, 0.5)
                    results.append({
                        "size": size_name, "transport": tname, "rounds": len(lat),
                        "p50_ms": round(p50 * 1000, 2), "p99_ms": round(pct(lat, 0.99) * 1000, 2),
                        "MiB_per_s": round(SIZES[size_name] / p50 / (1 << 20), 1),
                        "vs_clamdscan": round(p50 / base_p50, 2)})
        finally:
            builtin.terminate()
            builtin.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'size':6} {'transport':24} {'p50 ms':>8} {'p99 ms':>8} {'MiB/s':>8} "
          f"{'vs clamdscan':>12}")
    for r in results:
        print(f"{r['size']:6} {r['transport']:24} {r['p50_ms']:>8} {r['p99_ms']:>8} "
              f"{r['MiB_per_s']:>8} {r['vs_clamdscan']:>12}")
    doc = json.dumps({"bench": "scan", "quick": args.quick, "results": results}, indent=1)
    print(doc)
    if args.json_path:
        Path(args.json_path).write_text(doc)


if __name__ == "__main__":
    main()
