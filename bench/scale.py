"""Per-operation cost against the size of the tree: 10k, 100k (and 1M) files, one run.

    .venv/bin/python bench/scale.py [--sizes 10000,100000] [--max 1000000] [--sample 4000]
                                    [--repeat N] [--fd-cache N] [--keep DIR] [--json PATH]

For each size it generates a tree shaped like a guest data directory (a few
top-level directories, two more levels of fan-out, about a hundred mostly
small files per leaf directory: 90% 100 B..4 KiB, 9% up to 64 KiB, 1% up to
1 MiB; sparse files, so 1M files fit on a small disk), mounts it with the real
`vfile mount --foreground` (a scanning mount on the embedded built-in
appliance, fresh state directory), and measures, on the same sample of
files at every size (`--sample` files from as many whole leaf directories,
picked at random, so the kernel revalidates as many directories at every size):

- lookup_cold: the first stat() of a path in a fresh mount (no readdir
  before it): a FUSE LOOKUP that registers a new inode.
- walk: os.walk of the whole tree with an lstat() of every entry
  (readdirplus), after which the server knows every inode: the per-entry cost,
  and the server's descriptors and RSS before and after (RSS per known inode).
- open_cold: first open+read+close of each sample file (a scan each).
- server only (first sweep): the same sample against VFileOperations in the
  bench's own process, no kernel, every inode of the tree registered first:
  lookup of a known name, getattr, open+release. This isolates the server's
  own scaling (tables, descriptor cache) from the kernel's and the machine's.
- stat_warm / open_warm: stat(), and open+read+close of a file with a clean
  verdict, once the kernel's entry and attribute caches (1 s) expired, so each
  goes to the server, whose inode is known but whose descriptor was most
  likely evicted (the cache holds far fewer than the tree): a reopen by file
  handle is on this path.

Prints a table and JSON (`--json` also writes it): per size the per-op p50 in
microseconds (with `--repeat N`, the sizes are swept N times interleaved and
the median of the N p50s is reported, every run's p50 and p99 kept), server
descriptors and RSS, and ratios against the smallest size. The goal (issue
20): per-op cost at 1M within 1.2x of 10k, and descriptors bounded by the
cache whatever the size. `--max 1000000` adds the 1M tree (generation takes
minutes; outside CI). Trees are generated in a temp
directory (or `--keep DIR`, reused across runs) and removed unless kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import mounted  # type: ignore[import-not-found]

PER_LEAF = 100
TOP = 8
#: the kernel's entry and attribute timeout (vfile.passthrough.opsbase.ENTRY_TIMEOUT) plus margin
CACHE_EXPIRY = 1.3
SIZES = (10_000, 100_000)


def leaf_dirs(n: int) -> list[str]:
    """Leaf directory names for `n` files: TOP top-level dirs, then two fan-out levels."""
    leaves = max(1, -(-n // PER_LEAF))
    fan = max(1, round((leaves / TOP) ** 0.5))
    out = []
    for i in range(leaves):
        top, rest = i % TOP, i // TOP
        out.append(f"top{top:02d}/g{rest // fan:04d}/leaf{rest % fan:04d}")
    return out


def file_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.90:
        return rng.randrange(100, 4096)
    if r < 0.99:
        return rng.randrange(4096, 64 * 1024)
    return rng.randrange(64 * 1024, 1024 * 1024)


def generate(root: Path, n: int) -> list[str]:
    """Create the tree (if not there already) and return its files' relative paths."""
    rng = random.Random(n)
    marker = root / ".complete"
    rels: list[str] = []
    left = n
    for leaf in leaf_dirs(n):
        k = min(PER_LEAF, left)
        left -= k
        rels.extend(f"{leaf}/f{j:03d}.dat" for j in range(k))
    if marker.exists():
        return rels
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    head = b"vfile scale bench "
    made: set[str] = set()
    for rel in rels:
        d = rel.rsplit("/", 1)[0]
        if d not in made:
            os.makedirs(root / d, exist_ok=True)
            made.add(d)
        fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            # distinct content per file (so verdicts are per file); sparse tail
            os.write(fd, head + rel.encode())
            os.ftruncate(fd, file_size(rng))
        finally:
            os.close(fd)
    marker.touch()
    return rels


def pick_sample(rels: list[str], n: int) -> list[str]:
    """`n` files from whole leaf directories picked at random: the same number of
    directories (whose revalidation the kernel also asks for) at every size."""
    by_dir: dict[str, list[str]] = {}
    for rel in rels:
        by_dir.setdefault(rel.rsplit("/", 1)[0], []).append(rel)
    full = [d for d, files in by_dir.items() if len(files) == PER_LEAF]
    leaves = random.Random(7).sample(full, min(len(full), max(1, n // PER_LEAF)))
    out = [rel for d in leaves for rel in by_dir[d]]
    random.Random(8).shuffle(out)
    return out


def proc_stats(pid: int) -> dict[str, int]:
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss": rss}


def timed(paths: list[Path], op: Callable[[Path], object]) -> dict[str, float]:
    lat = []
    for p in paths:
        t0 = time.perf_counter()
        op(p)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"p50_us": round(lat[len(lat) // 2] * 1e6, 1),
            "p99_us": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e6, 1),
            "mean_us": round(statistics.fmean(lat) * 1e6, 1)}


def read_all(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def walk(mnt: Path) -> int:
    n = 0
    for dirpath, dirs, files in os.walk(mnt):
        for name in (*dirs, *files):
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def run_size(n: int, tree: Path, work: Path, sample_n: int, fd_cache: int | None, *,
             with_server: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    rels = generate(tree, n)
    gen_s = time.monotonic() - t0
    sample = pick_sample(rels, sample_n)
    mnt, state = work / f"mnt-{n}", work / f"state-{n}"
    shutil.rmtree(state, ignore_errors=True)
    mnt.mkdir(exist_ok=True)
    extra = ["--state-dir", str(state)]
    if fd_cache is not None:
        extra += ["--fd-cache", str(fd_cache)]
    out: dict[str, Any] = {"files": n, "generate_s": round(gen_s, 1)}
    if with_server:
        out["server"] = server_side(tree, sample)
    with mounted(tree, mnt, *extra) as server:
        pid = server.proc.pid
        paths = [mnt / r for r in sample]
        out["start"] = proc_stats(pid)
        out["lookup_cold"] = timed(paths, os.stat)
        t0 = time.monotonic()
        entries = walk(mnt)
        walk_s = time.monotonic() - t0
        after = proc_stats(pid)
        out["walk"] = {"entries": entries, "s": round(walk_s, 1),
                       "per_entry_us": round(walk_s / entries * 1e6, 1)}
        out["after_walk"] = after
        out["rss_per_inode_bytes"] = round((after["rss"] - out["start"]["rss"]) / entries)
        out["open_cold"] = timed(paths, read_all)
        time.sleep(CACHE_EXPIRY)
        out["stat_warm"] = timed(paths, os.stat)
        time.sleep(CACHE_EXPIRY)
        out["open_warm"] = timed(paths, read_all)
        out["end"] = proc_stats(pid)
    return out


def primitives(tree: Path, n: int = 20000) -> dict[str, float]:
    """What the descriptor cache costs per call, in this process (µs): a hit
    (`Inode.fd` of a cached inode), what a new inode costs (openat O_PATH +
    fstat), making a handle at eviction (name_to_handle_at), and a reopen
    (open_by_handle_at + fstat + close) of a file and of a directory."""
    from vfile.passthrough.fdcache import FdCache
    from vfile.passthrough.inodes import InodeTable
    from vfile.passthrough.syscalls import name_to_handle, open_by_handle

    opath = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    root_fd = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    mount_fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    rel = next(str(p.relative_to(tree)) for p in tree.rglob("*.dat"))
    dir_rel = rel.rsplit("/", 1)[0]
    table = InodeTable(os.dup(root_fd), os.fstat(root_fd), cache=FdCache(64, handles=True))
    fd = os.open(rel, opath, dir_fd=root_fd)
    node = table.add(os.fstat(fd), fd)

    def per_call(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(5):  # the best of five batches: the least disturbed by others
            t0 = time.perf_counter()
            for _ in range(n // 5):
                fn()
            best = min(best, (time.perf_counter() - t0) / (n // 5))
        return round(best * 1e6, 2)

    def new_inode() -> None:
        f = os.open(rel, opath, dir_fd=root_fd)
        os.fstat(f)
        os.close(f)

    handle, _ = name_to_handle(fd)
    dfd = os.open(dir_rel, opath, dir_fd=root_fd)
    dhandle, _ = name_to_handle(dfd)

    def reopen(h: bytes) -> Callable[[], None]:
        def go() -> None:
            f = open_by_handle(mount_fd, h, os.O_PATH | os.O_CLOEXEC)
            os.fstat(f)
            os.close(f)
        return go

    try:
        return {"cache_hit_us": per_call(lambda: node.fd),
                "fstat_us": per_call(lambda: os.fstat(node.fd)),
                "new_inode_openat_fstat_close_us": per_call(new_inode),
                "name_to_handle_at_us": per_call(lambda: name_to_handle(fd)),
                "reopen_file_by_handle_us": per_call(reopen(handle)),
                "reopen_dir_by_handle_us": per_call(reopen(dhandle)),
                "handle_bytes": len(handle)}
    finally:
        table.close_all()
        for f in (root_fd, mount_fd, dfd):
            os.close(f)


class _Caller:
    uid = gid = 0
    pid = os.getpid()
    umask = 0o022


def server_side(tree: Path, sample: list[str]) -> dict[str, Any]:
    """The server's own per-op cost, without the kernel: VFileOperations over
    `tree` in this process, every inode registered (as after a walk), then on
    the sample: lookup of a known name, getattr, open+release (passthrough
    hooks). Isolates the server's scaling from the kernel's and the machine's."""
    import trio

    from vfile.passthrough.fs import VFileOperations

    async def go() -> dict[str, Any]:
        root_fd = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        ops = VFileOperations(root_fd, os.fsencode(tree))
        ctx = _Caller()
        known: dict[str, tuple[int, int, bytes]] = {}
        stack: list[tuple[int, str]] = [(1, "")]
        t0 = time.perf_counter()
        while stack:
            ino, rel = stack.pop()
            for name in sorted(os.listdir(tree / rel if rel else tree)):
                if name.startswith("."):
                    continue
                e = await ops.lookup(ino, name.encode(), ctx)
                path = f"{rel}/{name}" if rel else name
                if name.endswith(".dat"):
                    known[path] = (e.st_ino, ino, name.encode())
                else:
                    stack.append((e.st_ino, path))
        register_us = (time.perf_counter() - t0) / len(ops.table) * 1e6
        out: dict[str, Any] = {"inodes": len(ops.table),
                               "register_us_per_inode": round(register_us, 1)}
        for label in ("lookup", "getattr", "open_release"):
            lat = []
            for rel in sample:
                ino, parent, bname = known[rel]
                t = time.perf_counter()
                if label == "lookup":
                    await ops.lookup(parent, bname, ctx)
                elif label == "getattr":
                    await ops.getattr(ino, ctx)
                else:
                    fi = await ops.open(ino, os.O_RDONLY, ctx)
                    await ops.release(fi.fh)
                lat.append(time.perf_counter() - t)
            lat.sort()
            out[f"{label}_p50_us"] = round(lat[len(lat) // 2] * 1e6, 1)
        out["fd_cache"] = ops.table.cache.statistics()
        ops.close()
        return out

    return trio.run(go)


OPS = ("lookup_cold", "stat_warm", "open_warm", "open_cold")


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    base = results[0]
    out: dict[str, dict[str, float]] = {}
    for r in results[1:]:
        key = f"{r['files']}_vs_{base['files']}"
        out[key] = {op: round(r[op]["p50_us"] / base[op]["p50_us"], 2) for op in OPS}
        out[key]["walk_per_entry"] = round(r["walk"]["per_entry_us"]
                                           / base["walk"]["per_entry_us"], 2)
    return out


def table(report: dict[str, Any]) -> str:
    res = report["results"]
    base = res[0]
    head = f"{'files':>9}" + "".join(f"{op + ' p50 µs':>20}" for op in OPS) + \
        f"{'walk µs/entry':>15}{'fds max':>9}{'RSS MiB':>9}{'B/inode':>9}"
    lines = [head]
    for r in res:
        cells = "".join(f"{r[op]['p50_us']:>10.0f} ({r[op]['p50_us'] / base[op]['p50_us']:.2f}x)"
                        .rjust(20) for op in OPS)
        fds = max(r["after_walk"]["fds"], r["end"]["fds"])
        lines.append(f"{r['files']:>9}{cells}{r['walk']['per_entry_us']:>15.1f}{fds:>9}"
                     f"{r['end']['rss'] / 2**20:>9.0f}{r['rss_per_inode_bytes']:>9}")
    return "\n".join(lines)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's repeats: per op the median of the runs' p50s (and every run kept)."""
    out = dict(runs[-1])
    for op in OPS:
        out[op] = {"p50_us": round(statistics.median(r[op]["p50_us"] for r in runs), 1),
                   "p50_us_runs": [r[op]["p50_us"] for r in runs],
                   "p99_us_runs": [r[op]["p99_us"] for r in runs]}
    out["walk"] = {**runs[-1]["walk"], "per_entry_us": round(statistics.median(
        r["walk"]["per_entry_us"] for r in runs), 1)}
    out["after_walk"] = {"fds": max(r["after_walk"]["fds"] for r in runs),
                         "rss": max(r["after_walk"]["rss"] for r in runs)}
    out["end"] = {"fds": max(r["end"]["fds"] for r in runs),
                  "rss": max(r["end"]["rss"] for r in runs)}
    out["rss_per_inode_bytes"] = round(statistics.median(
        r["rss_per_inode_bytes"] for r in runs))
    out["runs"] = len(runs)
    out["server"] = runs[0].get("server")
    return out


def server_table(report: dict[str, Any]) -> str:
    res = [r for r in report["results"] if r.get("server")]
    if not res:
        return ""
    base = res[0]["server"]
    cols = ("lookup_p50_us", "getattr_p50_us", "open_release_p50_us")
    lines = [f"{'server only':>11}{'inodes':>10}" + "".join(f"{c:>24}" for c in cols)]
    for r in res:
        sv = r["server"]
        lines.append(f"{r['files']:>11}{sv['inodes']:>10}" + "".join(
            f"{sv[c]:>15.1f} ({sv[c] / base[c]:.2f}x)" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated tree sizes (files)")
    ap.add_argument("--max", type=int, default=None,
                    help="also run this size (e.g. 1000000: takes minutes)")
    ap.add_argument("--sample", type=int, default=4000, help="files measured per size")
    ap.add_argument("--repeat", type=int, default=1,
                    help="sweep the sizes this many times, interleaved; report medians")
    ap.add_argument("--fd-cache", type=int, default=None, help="the mount's --fd-cache")
    ap.add_argument("--keep", type=Path, help="generate trees here and keep them")
    ap.add_argument("--json", type=Path, help="also write the JSON report here")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | (
        {args.max} if args.max else set()))
    work = Path(tempfile.mkdtemp(prefix="vfb-scale-"))
    trees = args.keep or work / "trees"
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            for n in sizes:  # interleaved, so drift on a shared machine hits every size
                t0 = time.monotonic()
                r = run_size(n, trees / f"tree-{n}", work, args.sample, args.fd_cache,
                             with_server=rep == 0)
                r["total_s"] = round(time.monotonic() - t0, 1)
                runs[n].append(r)
                print(f"# {n} files: {r['total_s']} s (generate {r['generate_s']} s)",
                      file=sys.stderr, flush=True)
        prims = primitives(trees / f"tree-{sizes[0]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = [combine(runs[n]) for n in sizes]
    report = {"params": {"sizes": sizes, "sample": args.sample, "fd_cache": args.fd_cache,
                         "repeat": args.repeat, "per_leaf_dir": PER_LEAF},
              "results": results, "ratios": ratios(results), "primitives": prims,
              "total_s": round(time.monotonic() - started, 1)}
    print(table(report))
    print(server_table(report))
    print("per call, µs: " + ", ".join(f"{k} {v}" for k, v in prims.items()))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
