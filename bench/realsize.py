"""Real programs at real sizes: native, `--no-scan` and a scanning mount (r26).

    .venv/bin/python bench/realsize.py [--steps tar,cp,rsync,git,sqlite,find]
        [--modes native,noscan,scan] [--files 20000] [--rows 1000000]
        [--tree 1000000] [--work /tmp/r26b] [--json OUT]

One step at a time and, within a step, the modes one after the other in the
same run (timing on a shared 2-core machine moves 2x between runs):

- tar:    `tar xf` of an archive of `--files` small files (100 B-4 KiB, random
          content, 100 directories) into a fresh directory;
- cp:     `cp -a` of that tree; rsync: `rsync -a` of it;
- git:    in the copied tree: `git init`, `add -A`, `commit`, `checkout -b`,
          `rm -r` of a tenth, `commit`, `checkout` back, `gc`;
- sqlite: one connection, WAL, `--rows` inserts in transactions of 10,000
          rows, then `integrity_check` and a count;
- find:   `find | wc -l` and `du -s` over a tree of `--tree` files (sparse,
          made once in the source, bench/scale.py's shape).

Per step and mode: the wall time of each command, its exit code, whether the
result is identical to the original (checked through the source directory,
behind the mount, so the check does not cost scans), and for mounts the
server's RSS and descriptors at the end, and the journal entries left once the
mount settled and the drain had `DRAIN_WAIT` s to empty it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))
sys.path.insert(0, str(HERE))
from mounting import mounted  # type: ignore[import-not-found]  # noqa: E402
from outage import deferred_paths  # type: ignore[import-not-found]  # noqa: E402
from queuedrace import wait_settled  # type: ignore[import-not-found]  # noqa: E402

from bench.scale import generate, proc_stats  # noqa: E402

#: how long the drain gets to empty the journal after the mount settled (s)
DRAIN_WAIT = 60.0
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C",
           "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}
SQLITE = """
import sqlite3, sys
rows = int(sys.argv[2])
c = sqlite3.connect(sys.argv[1])
c.execute('PRAGMA journal_mode=WAL')
c.execute('CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT)')
for start in range(0, rows, 10000):
    with c:
        end = min(rows, start + 10000)
        c.executemany('INSERT INTO t VALUES (?, ?)',
                      ((i, 'row %d ' % i + 'x' * 40) for i in range(start, end)))
ok = c.execute('PRAGMA integrity_check').fetchone()[0]
n = c.execute('SELECT count(*) FROM t').fetchone()[0]
c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
c.close()
print(ok, n)
sys.exit(0 if ok == 'ok' and n == rows else 1)
"""


def sh(cmd: str, cwd: Path, out: list[dict[str, Any]]) -> str:
    t = time.monotonic()
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, **GIT_ENV}, check=False, timeout=3600)
    out.append({"cmd": cmd, "rc": r.returncode, "s": round(time.monotonic() - t, 2)})
    print(f"    $ {cmd}  [rc {r.returncode}, {out[-1]['s']} s]", flush=True)
    if r.returncode:
        print(r.stdout[-1500:], r.stderr[-1500:], flush=True)
    return r.stdout


def make_seed(work: Path, files: int) -> Path:
    """`files` small files of random content in 100 directories, and their tar."""
    seed = work / f"seed{files}"
    if (seed / ".complete").exists():
        return seed
    shutil.rmtree(seed, ignore_errors=True)
    rng = random.Random(files)
    for i in range(files):
        d = seed / f"d{i % 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.txt").write_bytes(rng.randbytes(rng.randrange(100, 4096)))
    subprocess.run(["tar", "cf", str(work / f"seed{files}.tar"), "-C", str(seed), "."],
                   check=True)
    (seed / ".complete").touch()
    return seed


def digest(root: Path) -> str:
    """A digest of every regular file's relative path and content under `root`."""
    h = hashlib.sha256()
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != ".git")
        for name in sorted(names):
            if name == ".complete":
                continue
            p = os.path.join(d, name)
            h.update(os.path.relpath(p, root).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


@contextmanager
def place(mode: str, work: Path, prepare: Callable[[Path], None] | None = None,
          source: Path | None = None) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    """(where the program runs, the same directory in the source, the result dict).
    `source`: mount that directory (kept) instead of a fresh one."""
    base = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))
    src, mnt, state = source or base / "src", base / "mnt", base / "state"
    mnt.mkdir()
    src.mkdir(exist_ok=True)
    if prepare:
        prepare(src)
    res: dict[str, Any] = {"mode": mode, "cmds": []}
    try:
        if mode == "native":
            yield src, src, res
            return
        args = ["--no-scan"] if mode == "noscan" else ["--state-dir", str(state)]
        with mounted(src, mnt, *args) as server:
            yield mnt, src, res
            if mode == "scan":
                wait_settled(mnt)
                end = time.monotonic() + DRAIN_WAIT
                while (left := len(deferred_paths(state))) and time.monotonic() < end:
                    time.sleep(1)
                res["journal_left"] = left
            res.update(proc_stats(server.proc.pid))
            res["rss_mib"] = round(res.pop("rss") / 2**20, 1)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def step_tar(mode: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    seed = make_seed(work, a.files)
    with place(mode, work) as (p, src, res):
        (p / "x").mkdir()
        sh(f"tar xf {work}/seed{a.files}.tar -C x", p, res["cmds"])
        res["identical"] = digest(src / "x") == digest(seed)
    return res


def step_cp(mode: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    seed = make_seed(work, a.files)
    with place(mode, work) as (p, src, res):
        sh(f"cp -a {seed} x", p, res["cmds"])
        res["identical"] = digest(src / "x") == digest(seed)
    return res


def step_rsync(mode: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    seed = make_seed(work, a.files)
    with place(mode, work) as (p, src, res):
        sh(f"rsync -a {seed}/ x/", p, res["cmds"])
        res["identical"] = digest(src / "x") == digest(seed)
    return res


def step_git(mode: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    seed = make_seed(work, a.files)

    def prepare(src: Path) -> None:  # the worktree, copied natively (not timed)
        shutil.copytree(seed, src / "x", symlinks=True)
        (src / "x" / ".complete").unlink()

    with place(mode, work, prepare) as (p, src, res):
        x, c = p / "x", res["cmds"]
        sh("git init -q -b main", x, c)
        sh("git add -A", x, c)
        sh("git commit -q -m all", x, c)
        sh("git checkout -q -b cut && git rm -rq d0? && git commit -q -m cut", x, c)
        sh("git checkout -q main", x, c)
        sh("git gc -q", x, c)
        status = sh("git status --porcelain | wc -l && git fsck 2>&1 | wc -l", x, c)
        res["status_fsck_lines"] = status.split()
        res["identical"] = digest(src / "x") == digest(seed)
    return res


def step_sqlite(mode: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    with place(mode, work) as (p, src, res):
        script = work / "sqlite_rows.py"
        script.write_text(SQLITE)
        out = sh(f"{sys.executable} {script} t.db {a.rows}", p, res["cmds"])
        res["check"] = out.split()
        res["db_mib"] = round((src / "t.db").stat().st_size / 2**20, 1)
    return res


def step_find(mode: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    tree = work / f"tree{a.tree}"
    generate(tree / "t", a.tree)  # once; reused across runs (minutes at 1M)
    with place(mode, work, source=tree) as (p, _src, res):
        res["find"] = sh("find t | wc -l", p, res["cmds"]).strip()
        res["du"] = sh("du -s t", p, res["cmds"]).split()[0]
    return res


STEPS = {"tar": step_tar, "cp": step_cp, "rsync": step_rsync, "git": step_git,
         "sqlite": step_sqlite, "find": step_find}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--steps", default="tar,cp,rsync,git,sqlite")
    ap.add_argument("--modes", default="native,noscan,scan")
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tree", type=int, default=1_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/r26b"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    os.chmod(a.work, 0o755)
    report = []
    for step in a.steps.split(","):
        for mode in a.modes.split(","):
            print(f"== {step} / {mode}", flush=True)
            r = STEPS[step](mode, a.work, a)
            r["step"] = step
            r["total_s"] = round(sum(c["s"] for c in r["cmds"]), 2)
            print("  ", json.dumps({k: v for k, v in r.items() if k != "cmds"}), flush=True)
            report.append(r)
    print(json.dumps(report))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
