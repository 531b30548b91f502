"""Fleet boot storm: N guests against one clamd, directly and through the caching appliance.

One run, one real clamd (tests/servers.py's, its own clean-file cache on, as
clamd ships), for each N in --guests (default 1, 4, 16):

1. An "image": --files generated files of 1-256 KiB (random, distinct) and N
   copies of it (distinct inodes, same contents), plus --unique files that
   only one guest has. Unique contents = files + N x unique.
2. direct: N vfile mounts (`--appliance` = clamd's unix socket) "boot" at
   once: every guest opens and reads every file of its copy, 4 at a time,
   all guests together. Upstream scans = the scans the mounts sent to clamd
   (their pools' counters).
3. cached: a fresh real redis-server and `vfile appliance cache` in front of
   the same clamd; N fresh mounts on the caching appliance boot the same way.
   Upstream scans = the caching appliance's (its STATS).
4. reboot (cached only): the N guests mount again with fresh state (no local
   verdicts), as after a restart: the fleet cache is warm, so upstream scans
   should be 0.
5. update, without and with a grace (`--grace 300`): on the built-in
   appliance (clamd with local databases reports no new version), a warm
   fleet takes a signature update and storms again: without grace every
   unique content is scanned during the storm; with it the storm is answered
   from the previous version and the contents are rescanned afterwards at
   the rescan rate (reported: carried over, rescans after the storm).
   `--update-only` runs just these storms, in four modes: `none`, `grace`
   (the caching appliance's), `mount-grace` (the guests' own per-profile
   grace, `grace = "5m"`: each mount opens from its previous-version verdicts
   and its drain rescans through the caching appliance), `hot` (the caching
   appliance's background rescan of its kept most-opened contents, which the
   storm waits for: it starts once the pass is done).

Reported per run: upstream scans per storm (goal: unique contents, not
N x files), p50/p99 of open+read latency during the storm, storm time, and
opens that got no verdict (journaled) or were denied. Guests use the `safe`
fail mode with a 60 s deadline, so a slow appliance shows as latency, not as
deferred scans. JSON + table on stdout; a PNG plot of upstream scans and p99
against N.

    .venv/bin/python bench/fleet.py [--guests 1,4,16] [--json out.json] [--plot fleet.png]
    .venv/bin/python bench/fleet.py --update-only [--guests 1,4,16] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/, whose journal.py would shadow the journal package.
sys.path[:] = [str(ROOT), str(ROOT / "tests"),
               *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]
from fleet_servers import running_cache, running_redis  # type: ignore[import-not-found]  # noqa: E402
from mounting import mounted  # type: ignore[import-not-found]  # noqa: E402
from outage import running_appliance  # type: ignore[import-not-found]  # noqa: E402
from servers import make_samples, running_clamd  # type: ignore[import-not-found]  # noqa: E402

from vfile import control  # noqa: E402

PER_GUEST_OPENERS = 4
GUEST_TOML = """\
[pool]
attempt_timeout = "30s"
retries = 0
probe_interval = "1s"
"""


def make_image(root: Path, files: int) -> dict[str, bytes]:
    rng = random.Random(17)
    return {f"usr/lib/f{i:04d}.so": rng.randbytes(rng.randint(1024, 256 * 1024))
            for i in range(files)}


def write_tree(src: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def storm(mounts: list[Path], rels: list[list[str]]) -> dict[str, Any]:
    """Every guest reads every file of its own, all guests at once; latency of each open+read."""
    latencies: list[float] = []
    failed = 0
    lock = threading.Lock()
    start = threading.Barrier(len(mounts) * PER_GUEST_OPENERS)

    def boot(mnt: Path, mine: list[str]) -> None:
        nonlocal failed
        start.wait()
        for rel in mine:
            t0 = time.perf_counter()
            try:
                with open(mnt / rel, "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                with lock:
                    failed += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(mounts) * PER_GUEST_OPENERS) as pool:
        futures = [pool.submit(boot, mnt, mine[k::PER_GUEST_OPENERS])
                   for mnt, mine in zip(mounts, rels, strict=True)
                   for k in range(PER_GUEST_OPENERS)]
        for f in futures:
            f.result()
    took = time.perf_counter() - t0
    return {"opens": len(latencies) + failed, "denied": failed, "seconds": round(took, 3),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2)}


@contextlib.contextmanager
def guests(tmp: Path, tag: str, n: int, image: dict[str, bytes], unique: int,  # noqa: PLR0917
           appliance: str, reuse_src: bool = False, toml: str = GUEST_TOML) -> Any:
    """N mounts of N copies of the image (+ unique files), fresh state dirs."""
    cfg = tmp / f"guest-{tag}.toml"
    cfg.write_text(toml)
    with contextlib.ExitStack() as stack:
        mounts, rels = [], []
        for g in range(n):
            src = tmp / f"src-{g}"
            if not reuse_src:
                shutil.rmtree(src, ignore_errors=True)
                mine = {**image, **{f"home/g{g}/u{u}.txt": f"guest {g} note {u}\n".encode() * 100
                                    for u in range(unique)}}
                write_tree(src, mine)
            mnt = tmp / f"mnt-{tag}-{g}"
            mnt.mkdir(exist_ok=True)
            stack.enter_context(mounted(
                src, mnt, "--appliance", appliance, "--fail-mode", "safe", "--timeout", "60",
                "--config", str(cfg), "--state-dir", str(tmp / f"state-{tag}-{g}")))
            mounts.append(mnt)
            rels.append(sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()))
        yield mounts, rels


def status(mnt: Path) -> dict[str, Any]:
    result: dict[str, Any] = control.call(mnt, "status", timeout=60)
    return result


def direct_run(tmp: Path, n: int, image: dict[str, bytes], unique: int,
               clamd_url: str) -> dict[str, Any]:
    with guests(tmp, "direct", n, image, unique, clamd_url) as (mounts, rels):
        result = storm(mounts, rels)
        sts = [status(m) for m in mounts]
        result["upstream_scans"] = sum(a["scans"] for s in sts for a in s["appliances"])
        result["deferred"] = sum(s["journal"]["deferred"] for s in sts)
    return result


def cached_runs(tmp: Path, n: int, image: dict[str, bytes], unique: int,
                clamd_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with running_redis(tmp / "redis") as redis, running_cache([clamd_url], redis.url) as cache:
        out = []
        for tag in ("cached", "reboot"):
            before = cache.stats()
            with guests(tmp, tag, n, image, unique, cache.url,
                        reuse_src=tag == "reboot") as (mounts, rels):
                result = storm(mounts, rels)
                sts = [status(m) for m in mounts]
                result["deferred"] = sum(s["journal"]["deferred"] for s in sts)
            stats = cache.stats()
            result["upstream_scans"] = stats["upstream_scans"] - before["upstream_scans"]
            result["cache"] = {k: stats[k] - before[k] for k in (
                "requests", "served_from_cache", "shared_local", "shared_remote", "uncached")}
            out.append(result)
    return out[0], out[1]


def wait_until(check: Any, what: str, deadline: float = 120.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


#: after-update modes: no grace; the caching appliance's grace; the mounts' own
#: per-profile grace; the caching appliance's background rescan of the most-opened
UPDATE_MODES = ("none", "grace", "mount-grace", "hot")
MOUNT_GRACE_TOML = GUEST_TOML + '\n[[profile]]\nname = "default"\ngrace = "5m"\n'


def update_run(tmp: Path, n: int, image: dict[str, bytes], unique: int,
               mode: str = "none") -> dict[str, Any]:
    """A warm fleet, then a signature update, then the next storm (same mounts).

    The upstream is the built-in appliance (its version is a digest of its
    signatures; clamd with local databases only does not change its version).
    """
    sigdir = tmp / f"sigs-{mode}"
    sigdir.mkdir()
    (sigdir / "a.hdb").write_text(f"{'0' * 32}:1:Vfile.Bench.A\n")
    extra: tuple[str, ...] = {
        "grace": ("--grace", "300", "--rescan-rate", "100"),
        "hot": ("--hot-dir", str(tmp / "hot"), "--hot-interval", "0.2",
                "--rescan-rate", "100")}.get(mode, ())
    toml = MOUNT_GRACE_TOML if mode == "mount-grace" else GUEST_TOML
    with running_appliance(sigdir) as upstream, \
            running_redis(tmp / f"redis-{mode}") as redis, \
            running_cache([upstream.url], redis.url, *extra) as cache, \
            guests(tmp, f"upd-{mode}", n, image, unique, cache.url,
                   toml=toml) as (mounts, rels):
        storm(mounts, rels)  # warm: every content has a verdict under version A
        result: dict[str, Any] = {}
        if mode == "hot":  # fewer contents than --hot-top: every one is kept
            wait_until(lambda: cache.stats()["hot"]["kept"] >= len(image) + n * unique,
                       "copies of every content")
        old = cache.stats()["sig_version"]
        (sigdir / "b.hdb").write_text(f"{'1' * 32}:1:Vfile.Bench.B\n")
        upstream.reload()
        t_update = time.monotonic()
        wait_until(lambda: cache.stats()["sig_version"] != old, "the new version")
        if mode == "hot":
            wait_until(lambda: cache.stats()["hot"]["passes"] >= 1, "the background rescan")
            result["hot_pass_s"] = round(time.monotonic() - t_update, 2)
            result["rescans_before"] = cache.stats()["hot"]["rescanned"]
        # Every guest's pool sees it too (its probe, 1 s; longer on a loaded machine):
        # a guest still at the old version would answer from its local verdicts.
        wait_until(lambda: all(status(m)["appliances"][0]["sig_version"] not in ("", old)
                               for m in mounts), "the guests to see the new version")
        before = cache.stats()["upstream_scans"]
        result.update(storm(mounts, rels))
        result["upstream_scans"] = cache.stats()["upstream_scans"] - before
        if mode == "grace":
            wait_until(lambda: cache.stats()["grace"]["carried_pending"] == 0,
                       "the rescan to cover the carried-over contents")
            stats = cache.stats()
            result["carried_over"] = stats["carried_over"]
            result["rescans_after"] = stats["upstream_scans"] - before - result["upstream_scans"]
        if mode == "mount-grace":
            sts = [status(m) for m in mounts]
            result["carried_over"] = sum(s["gate"]["grace"]["carried"] for s in sts)
            wait_until(lambda: all(status(m)["journal"]["deferred"] == 0 for m in mounts),
                       "the drains to rescan the carried-over files", 600)
            result["rescans_after"] = cache.stats()["upstream_scans"] - before \
                - result["upstream_scans"]
    return result


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["guests"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ns, [r["direct"]["upstream_scans"] for r in results], "o-", label="direct to clamd")
    ax1.plot(ns, [r["cached"]["upstream_scans"] for r in results], "s-",
             label="caching appliance")
    ax1.plot(ns, [r["unique_contents"] for r in results], "k:", label="unique contents")
    ax1.plot(ns, [r["reboot"]["upstream_scans"] for r in results], "^-", label="reboot (warm)")
    ax1.plot(ns, [r["update"]["upstream_scans"] for r in results], "v--",
             label="after an update, no grace")
    ax1.plot(ns, [r["update_grace"]["upstream_scans"] for r in results], "D--",
             label="after an update, grace")
    ax1.set_xlabel("guests booting at once")
    ax1.set_ylabel("upstream scans per storm")
    ax1.legend(fontsize="small")
    ax2.plot(ns, [r["direct"]["p99_ms"] for r in results], "o-", label="direct to clamd")
    ax2.plot(ns, [r["cached"]["p99_ms"] for r in results], "s-", label="caching appliance")
    ax2.plot(ns, [r["reboot"]["p99_ms"] for r in results], "^-", label="reboot (warm)")
    ax2.plot(ns, [r["update"]["p99_ms"] for r in results], "v--",
             label="after an update, no grace")
    ax2.plot(ns, [r["update_grace"]["p99_ms"] for r in results], "D--",
             label="after an update, grace")
    ax2.set_xlabel("guests booting at once")
    ax2.set_ylabel("p99 open+read latency (ms)")
    ax2.legend(fontsize="small")
    for ax in (ax1, ax2):
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def update_only(ns: list[int], image: dict[str, bytes], unique: int, out: Path | None) -> None:
    results = []
    with tempfile.TemporaryDirectory(prefix="vfile-fleet-") as td:
        for n in ns:
            row: dict[str, Any] = {"guests": n, "unique_contents": len(image) + n * unique}
            for mode in UPDATE_MODES:
                run = Path(td) / f"n{n}-{mode}"
                run.mkdir()
                row[mode] = update_run(run, n, image, unique, mode)
                shutil.rmtree(run, ignore_errors=True)
                print(f"N={n} {mode} done", file=sys.stderr, flush=True)
            results.append(row)
    print("the storm after a signature update (upstream scans during it / after it, "
          "p50 / p99 ms):")
    print(f"{'N':>3} {'unique':>7} | " + " | ".join(f"{m:>26}" for m in UPDATE_MODES))
    for r in results:
        cells = []
        for m in UPDATE_MODES:
            x = r[m]
            later = x.get("rescans_after", x.get("rescans_before", 0))
            cells.append(f"{x['upstream_scans']:>4} / {later:>4}  {x['p50_ms']:>6.1f} / "
                         f"{x['p99_ms']:>6.1f}")
        print(f"{r['guests']:>3} {r['unique_contents']:>7} | " + " | ".join(cells))
    doc = {"bench": "fleet-update", "machine_cpus": os.cpu_count(), "results": results}
    print(json.dumps(doc, indent=2))
    if out:
        out.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guests", default="1,4,16", help="comma-separated guest counts")
    ap.add_argument("--files", type=int, default=40, help="files in the shared image")
    ap.add_argument("--unique", type=int, default=3, help="files only one guest has")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    ap.add_argument("--plot", type=Path, default=Path("fleet.png"), help="PNG plot path")
    ap.add_argument("--update-only", action="store_true",
                    help="only the storms after a signature update (no clamd), in every "
                    "mode: " + ", ".join(UPDATE_MODES))
    args = ap.parse_args()
    ns = [int(x) for x in args.guests.split(",")]
    image = make_image(Path("."), args.files)
    if args.update_only:
        update_only(ns, image, args.unique, args.json)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="vfile-fleet-") as td:
        tmp = Path(td)
        samples = make_samples(tmp / "samples")
        with running_clamd(tmp / "clamd", samples.sigdir) as clamd:
            for n in ns:
                run = tmp / f"n{n}"
                run.mkdir()
                direct = direct_run(run, n, image, args.unique, clamd.unix_url)
                cached, reboot = cached_runs(run, n, image, args.unique, clamd.unix_url)
                update = update_run(run, n, image, args.unique, "none")
                update_grace = update_run(run, n, image, args.unique, "grace")
                results.append({"guests": n, "files_per_guest": args.files + args.unique,
                                "unique_contents": args.files + n * args.unique,
                                "direct": direct, "cached": cached, "reboot": reboot,
                                "update": update, "update_grace": update_grace})
                shutil.rmtree(run, ignore_errors=True)
                print(f"N={n} done", file=sys.stderr, flush=True)
    out = {"bench": "fleet", "machine_cpus": os.cpu_count(), "results": results}
    print(f"{'N':>3} {'unique':>7} | {'direct scans':>12} {'p50':>7} {'p99':>8} | "
          f"{'cached scans':>12} {'p50':>7} {'p99':>8} | {'reboot scans':>12} {'p99':>8}")
    for r in results:
        d, c, b = r["direct"], r["cached"], r["reboot"]
        print(f"{r['guests']:>3} {r['unique_contents']:>7} | {d['upstream_scans']:>12} "
              f"{d['p50_ms']:>7.1f} {d['p99_ms']:>8.1f} | {c['upstream_scans']:>12} "
              f"{c['p50_ms']:>7.1f} {c['p99_ms']:>8.1f} | {b['upstream_scans']:>12} "
              f"{b['p99_ms']:>8.1f}")
    print("(latencies in ms: open + read of one file during the storm)")
    print("after a signature update, the next storm through the caching appliance:")
    print(f"{'N':>3} | {'no grace: scans':>15} {'p50':>7} {'p99':>8} | "
          f"{'grace: scans':>12} {'p50':>7} {'p99':>8} {'carried':>8} {'rescans':>8}")
    for r in results:
        u, g = r["update"], r["update_grace"]
        print(f"{r['guests']:>3} | {u['upstream_scans']:>15} {u['p50_ms']:>7.1f} "
              f"{u['p99_ms']:>8.1f} | {g['upstream_scans']:>12} {g['p50_ms']:>7.1f} "
              f"{g['p99_ms']:>8.1f} {g['carried_over']:>8} {g['rescans_after']:>8}")
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    try:
        plot(results, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    except ImportError as err:
        print(f"no plot (matplotlib missing: {err})", file=sys.stderr)


if __name__ == "__main__":
    main()
