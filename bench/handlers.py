"""What vfile's handlers cost above the pyfuse3 floor's, without the kernel.

    .venv/bin/python bench/handlers.py [--n N] [--rounds R] [--json PATH]

Calls the Operations methods directly under trio, as pyfuse3 would (a fake
request context, no mount, no kernel round trip), on vfile's
`VFileOperations` (no hooks: `--no-scan`; and with the gate's warm path,
a hook object whose cached-verdict check says yes; and as it was before read-only
opens went by name, `vfile_by_proc`) and on bench/floorfs.py's `FloorFS`,
interleaved round by round; µs per call in the best round (timeit's rule: the
rest is other processes' noise).
This is the "vfile handler" part of a request's cost (bench/reqcost.py has the
rest: the kernel round trip, pyfuse3's dispatch, trio). Syscalls are real, on
a temporary directory of the machine's /tmp.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import iotiming
from bench.floorfs import FloorFS
from vfile.hooks import NoHooks, RequestCtx
from vfile.passthrough.fs import VFileOperations

ROOT = pyfuse3.ROOT_INODE
BUF = os.urandom(4096)


class WarmHooks(NoHooks):
    """The gate's warm path as the Operations see it: not trivial, every read-only
    open allowed by its cached verdict (the check itself is bench/gate.py's)."""

    trivial = False


class ByProc(VFileOperations):
    """vfile as before the read-only open's fast path: every open by /proc/self/fd/N."""

    def _open_by_name(self, node: Any, oflags: int) -> None:
        return None


CTX = RequestCtx(uid=0, gid=0, pid=os.getpid(), umask=0o022)


async def _ignore(aw: Awaitable[Any]) -> None:
    with contextlib.suppress(pyfuse3.FUSEError):
        await aw


def cases(ops: Any, n: int) -> dict[str, Callable[[int], Awaitable[Any]]]:
    """name -> one call (i: the call's index)."""
    state: dict[str, Any] = {}

    async def setup() -> None:
        state["ino"] = (await ops.lookup(ROOT, b"small", CTX)).st_ino
        # writes go to another file: an open for writing sends the next opens of the
        # same file the slow way (another writer's pages may be unflushed)
        state["wino"] = wino = (await ops.lookup(ROOT, b"w", CTX)).st_ino
        state["wfh"] = (await ops.open(wino, os.O_RDWR, CTX)).fh

    async def lookup(_i: int) -> None:
        await ops.lookup(ROOT, b"small", CTX)

    async def lookup_missing(_i: int) -> None:
        await _ignore(ops.lookup(ROOT, b"missing", CTX))

    async def getattr_(_i: int) -> None:
        await ops.getattr(state["ino"], CTX)

    async def open_release(_i: int) -> None:
        fi = await ops.open(state["ino"], os.O_RDONLY, CTX)
        await ops.flush(fi.fh)
        await ops.release(fi.fh)

    async def getxattr_cap(_i: int) -> None:
        await _ignore(ops.getxattr(state["ino"], b"security.capability", CTX))

    async def getxattr_open(_i: int) -> None:
        # what each write(2) asks (file_remove_privs), of a file open for writing
        await _ignore(ops.getxattr(state["wino"], b"security.capability", CTX))

    async def write_4k(i: int) -> None:
        await ops.write(state["wfh"], (i % 64) * 4096, BUF)

    async def create_release(i: int) -> None:
        fi, _ = await ops.create(ROOT, f"c{state.setdefault('round', 0)}-{i}".encode(),
                                 0o100644, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CTX)
        await ops.flush(fi.fh)
        await ops.release(fi.fh)

    state["setup"] = setup
    return {"lookup": lookup, "lookup (missing)": lookup_missing, "getattr": getattr_,
            "open+flush+release": open_release, "getxattr (no such attr)": getxattr_cap,
            "getxattr (open file)": getxattr_open,
            "write 4 KiB": write_4k, "create+flush+release": create_release,
            "_setup": lambda _i: setup()}


def contenders(base: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("floor", "vfile_noscan", "vfile_warm", "vfile_by_proc"):
        src = base / name
        src.mkdir()
        (src / "small").write_bytes(b"x" * 100)
        (src / "w").write_bytes(b"")
        if name == "floor":
            out[name] = FloorFS(str(src), xattr=True, writeback=True)
        else:
            root_fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            hooks = WarmHooks() if name == "vfile_warm" else None
            cls = ByProc if name == "vfile_by_proc" else VFileOperations
            out[name] = cls(root_fd, os.fsencode(str(src)), hooks)
    return out


async def measure(ops: dict[str, Any], n: int, rounds: int) -> dict[str, dict[str, float]]:
    per: dict[str, dict[str, list[float]]] = {c: {} for c in ops}
    calls = {c: cases(o, n) for c, o in ops.items()}
    for c in ops:
        await calls[c]["_setup"](0)
    clock = time.perf_counter_ns
    for r in range(rounds):
        for c in ops:
            for name, call in calls[c].items():
                if name.startswith("_"):
                    continue
                count = n // 10 if name.startswith("create") else n
                t0 = clock()
                for i in range(r * n, r * n + count):
                    await call(i)
                per[c].setdefault(name, []).append((clock() - t0) / count / 1000)
    # The best round: on a shared machine every round is the intrinsic cost plus noise
    # (other processes, cache misses they cause), which the minimum leaves out.
    return {c: {k: min(v) for k, v in d.items()} for c, d in per.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per case and round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="vfile-handlers-"))
    os.umask(0)
    try:
        res = trio.run(measure, contenders(base), args.n, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    names = list(res["floor"])
    print(f"µs per call, best of {args.rounds} rounds; load average "
          + " ".join(f"{x:.2f}" for x in load))
    print(f"{'handler':<26}" + "".join(f"{c:>14}" for c in res) + f"{'vfile - floor':>15}")
    for k in names:
        print(f"{k:<26}" + "".join(f"{res[c][k]:>14.1f}" for c in res)
              + f"{res['vfile_warm'][k] - res['floor'][k]:>15.1f}")
    report = {"n": args.n, "rounds": args.rounds, "load": load, "us_per_call": res}
    return iotiming.emit(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
