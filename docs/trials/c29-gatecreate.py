"""c29: the gate's own CPU per create, without the kernel, checkout against checkout.

    .venv/bin/python docs/trials/c29-gatecreate.py CHECKOUT_A CHECKOUT_B [--n 2000] [--rounds 7]
                                                   [--distinct]

Each round runs, in a fresh process per checkout (its own `vfile`, imported from that
directory; alternating which goes first), a real Gate on a real Journal and the
embedded built-in engine (as `vfile mount` builds them with no `--appliance`), and
calls the hooks as the passthrough does for `create + write 4 KiB + close`:
`on_write_intent` (a new name), the file created and written in the source,
`on_last_close` with the handle's descriptor. One writer, a tick's sleep every 20
files so closes are judged by later closes and by the batch timer as on a mount.
Prints the trio thread's CPU µs per create in the gate (time.thread_time around the
hooks, the checkpoints and sleeps where the batch task and the journal's callbacks
run, and the wait until idle; not the harness's own open/write/fstat/close of the
file), per round and the median, per checkout. The journal's writer
thread is not counted (it is not the thread that serves FUSE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import os, sys, time, json, trio
n, distinct, base = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
from vfile.config.reader import parse_config
from vfile.filter.actions import Actions
from vfile.filter.gate import Gate
from vfile.hooks import RequestCtx
from vfile.journal.store import Journal
from vfile.scanner.builtin import BuiltinAppliance
from vfile.scanner.embedded import EmbeddedClient
from vfile.scanner.pool import Pool

CTX = RequestCtx(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)

async def main():
    src = os.path.join(base, "src"); os.makedirs(src)
    journal = Journal.open(os.path.join(base, "state"))
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    pool = Pool([EmbeddedClient(BuiltinAppliance())])
    gate = Gate(parse_config(""), pool, journal, Actions(sfd, journal,
                quarantine_dir=os.path.join(base, "q")), source_fd=sfd)
    same = os.urandom(4096)
    bufs = [os.urandom(4096) if distinct else same for _ in range(n)]
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        await nursery.start(gate.serve)
        cpu = 0.0  # the trio thread in the gate only (not the harness's own syscalls)
        w0 = time.perf_counter()
        for i in range(n):
            name = f"f{i}"
            t = time.thread_time()
            token = await gate.on_write_intent(name.encode(), None, CTX)
            cpu += time.thread_time() - t
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=sfd)
            os.write(fd, bufs[i])
            st = os.fstat(fd)
            t = time.thread_time()
            await gate.on_last_close(name.encode(), fd, st)
            cpu += time.thread_time() - t
            os.close(fd)
            t = time.thread_time()
            await trio.lowlevel.checkpoint()
            if i % 20 == 19:
                await trio.sleep(0.005)  # a tick: later closes judge the due ones
            cpu += time.thread_time() - t
        t = time.thread_time()
        await gate.wait_idle()
        cpu += time.thread_time() - t
        wall = time.perf_counter() - w0
        st = gate.statistics()
        nursery.cancel_scope.cancel()
    journal.close()
    print(json.dumps({"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6,
                      "close_scans": st["close_scans"], "by_hash": st["close_scans_by_hash"],
                      "pending": st["pending_intents"]}))

trio.run(main)
"""


def one(checkout: Path, n: int, distinct: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="c29gate-") as base:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), "1" if distinct else "0",
                              base], cwd=checkout, capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(checkout)})
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkouts", type=Path, nargs=2)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--distinct", action="store_true")
    args = ap.parse_args()
    names = [str(c) for c in args.checkouts]
    cpu: dict[str, list[float]] = {c: [] for c in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for c in order:
            res = one(Path(c), args.n, args.distinct)
            assert res["pending"] == 0 and res["close_scans"] == args.n, res
            cpu[c].append(res["cpu_us"])
            print(f"round {r} {c}: trio CPU {res['cpu_us']:.1f} µs/create, wall "
                  f"{res['wall_us']:.1f}, by hash {res['by_hash']}", flush=True)
    meds = {c: statistics.median(v) for c, v in cpu.items()}
    for c in names:
        print(f"{c}: median {meds[c]:.1f} µs/create [{min(cpu[c]):.1f}-{max(cpu[c]):.1f}]")
    diffs = sorted(b - a for a, b in zip(cpu[names[0]], cpu[names[1]], strict=True))
    print(f"B - A per round: median {statistics.median(diffs):+.1f} µs "
          f"[{diffs[0]:+.1f} {diffs[-1]:+.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
