"""Real programs through a scanning mount at real sizes (x23, README "Attack review x23").

    .venv/bin/python scripts/real_programs.py [git,make,sqlite,pip,tar,rsyncx,rsync]
    X23_MOUNT="-o no_writeback" .venv/bin/python scripts/real_programs.py ...

Each step runs in a fresh directory pair of one `tests/clients.scanning_mount`
(built-in appliance, defaults; `X23_MOUNT` adds mount arguments) and, where it
compares, natively too; it prints each command with its exit code and seconds,
whether the contents are identical (sha256), and, once the mount settled, how many
files `outage.unaccounted` finds. `git` clones ORIGIN (any repository); `tar`
archives /work/main/.venv; `rsyncx` makes a 10,000-file tree with xattrs, modes and
hard links, `rsync` a 100,000-file tree (20+ minutes through the mount on a loaded
2-core machine), both under WORK. `pip` needs the configured package index.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from clients import Pair, Scanning, scanning_mount
from outage import status, unaccounted
from queuedrace import wait_settled

ORIGIN = "/work/.mirror/python-trio+trio/repo"
WORK = Path("/tmp/x23")
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C",
           "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}


def sh(cmd: str, cwd: Path | None = None, timeout: float = 3600,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    t = time.monotonic()
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})}, check=False)
    print(f"  $ {cmd}  [{r.returncode}, {time.monotonic() - t:.1f}s]", flush=True)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:], flush=True)
    return r


def hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip]
        for f in files:
            p = os.path.join(d, f)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "L" + os.readlink(p)
                continue
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while b := fh.read(1 << 20):
                    h.update(b)
            out[os.path.relpath(p, root)] = h.hexdigest()
    return out


def step_git(n: Path, m: Path) -> None:
    for place in (n, m):
        sh(f"git clone -q --no-local {ORIGIN} clone", cwd=place, env=GIT_ENV)
    repo = m / "clone"
    print("   status:", repr(sh("git status --porcelain", cwd=repo, env=GIT_ENV).stdout[:300]))
    sh("git gc -q --aggressive", cwd=repo, env=GIT_ENV)
    sh("git fsck --strict", cwd=repo, env=GIT_ENV)
    sh("git checkout -q HEAD~500 && git checkout -q main", cwd=repo, env=GIT_ENV)
    print("   status:", repr(sh("git status --porcelain", cwd=repo, env=GIT_ENV).stdout[:300]))
    a, b = hashes(n / "clone", skip=(".git",)), hashes(repo, skip=(".git",))
    print("   files", len(a), "identical", a == b, flush=True)


def step_make(n: Path, m: Path) -> None:
    for place in (n, m):
        src = place / "proj"
        src.mkdir()
        for i in range(60):
            (src / f"f{i}.c").write_text(
                f'#include "h.h"\nint f{i}(int x){{ int s=0; for(int j=0;j<x;j++) '
                f"s+=j*{i}; return s; }}\n")
        (src / "h.h").write_text("#pragma once\n")
        (src / "main.c").write_text(
            "#include <stdio.h>\n" + "".join(f"int f{i}(int);\n" for i in range(60))
            + "int main(){long t=0;" + "".join(f"t+=f{i}(10);" for i in range(60))
            + 'printf("%ld\\n",t);return 0;}\n')
        (src / "Makefile").write_text(
            "OBJS=$(patsubst %.c,%.o,$(wildcard *.c))\nprog: $(OBJS)\n\t$(CC) -o $@ $^\n"
            "%.o: %.c h.h\n\t$(CC) -O2 -c -o $@ $<\nclean:\n\trm -f *.o prog\n")
        sh("make -j2 -s && ./prog && make -s clean && make -j2 -s && ./prog", cwd=src)
    same = sh("./prog", cwd=m / "proj").stdout == sh("./prog", cwd=n / "proj").stdout
    print("   same output:", same)


def step_sqlite(n: Path, m: Path) -> None:
    db = m / "t.db"
    sh(f"sqlite3 {db} 'PRAGMA journal_mode=WAL; CREATE TABLE t(w INT, i INT, v TEXT);'")
    writer = ("import sqlite3\nc = sqlite3.connect({db!r}, timeout=60)\n"
              "for i in range(2000):\n"
              "    with c: c.execute('INSERT INTO t VALUES (?,?,?)', ({w}, i, 'x'*200))\n")
    reader = ("import sqlite3, time\nc = sqlite3.connect({db!r}, timeout=60)\n"
              "for i in range(300):\n"
              "    c.execute('SELECT count(*), sum(length(v)) FROM t').fetchone()\n"
              "    time.sleep(0.01)\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer.format(db=str(db), w=w)])
             for w in range(4)]
    procs.append(subprocess.Popen([sys.executable, "-c", reader.format(db=str(db))]))
    print("   exit codes", [p.wait(600) for p in procs])
    r = sh(f"sqlite3 {db} 'PRAGMA integrity_check; SELECT count(*), "
           "count(distinct w*100000+i) FROM t; PRAGMA wal_checkpoint(TRUNCATE);'")
    print("   ", r.stdout.split())


def step_pip(n: Path, m: Path) -> None:
    sh(f"{sys.executable} -m venv {m}/venv", timeout=600)
    sh(f"{m}/venv/bin/pip install -q requests attrs trio", timeout=900)
    r = sh(f"{m}/venv/bin/python -c 'import requests, trio, attrs; print(trio.__version__)'")
    print("   ", r.stdout.strip())
    sh(f"{m}/venv/bin/pip check")


def step_tar(n: Path, m: Path) -> None:
    tarball = WORK / "big.tar"
    if not tarball.exists():
        sh(f"tar cf {tarball} -C /work/main .venv")
    print("   tar size MiB", tarball.stat().st_size >> 20)
    for place in (n, m):
        sh(f"tar xf {tarball} -C {place}")
    a, b = hashes(n / ".venv"), hashes(m / ".venv")
    print("   files", len(a), "identical", a == b, flush=True)


def _tree(root: Path, dirs: int, xattrs: bool) -> Path:
    if root.exists():
        return root
    for d in range(dirs):
        dd = root / f"d{d:03}"
        dd.mkdir(parents=True)
        for f in range(1000):
            p = dd / f"f{f:04}"
            p.write_bytes(f"{d}/{f}\n".encode() * (1 + f % 7))
            if xattrs and f % 3 == 0:
                os.setxattr(p, "user.k", str(f).encode())
            if xattrs and f % 5 == 0:
                p.chmod(0o600)
            if xattrs and f % 50 == 0:
                os.link(p, dd / f"h{f:04}")
    return root


def _rsync(tree: Path, n: Path, m: Path, flags: str) -> None:
    sh(f"rsync {flags} {tree}/ {m}/in/")
    sh(f"rsync {flags} {m}/in/ {n}/out/")
    print("   diff empty:", sh(f"diff -r {tree} {n}/out | head -5").stdout == "")
    sh(f"rsync {flags} --delete {tree}/ {m}/in/")


def step_rsyncx(n: Path, m: Path) -> None:
    _rsync(_tree(WORK / "tree10k", 10, xattrs=True), n, m, "-aHX")


def step_rsync(n: Path, m: Path) -> None:
    _rsync(_tree(WORK / "tree100k", 100, xattrs=False), n, m, "-a")


STEPS = {"git": step_git, "make": step_make, "sqlite": step_sqlite, "pip": step_pip,
         "tar": step_tar, "rsyncx": step_rsyncx, "rsync": step_rsync}


def check(s: Scanning, name: str, t0: float, report: list[Any]) -> None:
    try:
        wait_settled(s.mnt)
    except AssertionError as e:
        print("  NOT SETTLED", e, flush=True)
    st = status(s.mnt)
    left = unaccounted(s.src, s.state, st["appliances"][0]["sig_version"])
    gate = st["gate"]
    print(f"[{name}] {time.monotonic() - t0:.1f}s unaccounted={len(left)} {left[:10]} "
          f"denials={gate['denials']} pending={gate['pending_intents']}", flush=True)
    report.append((name, round(time.monotonic() - t0, 1), len(left)))


def main() -> None:
    WORK.mkdir(exist_ok=True)
    steps = sys.argv[1].split(",") if len(sys.argv) > 1 else list(STEPS)
    report: list[Any] = []
    with scanning_mount(*os.environ.get("X23_MOUNT", "").split()) as s:
        for name in steps:
            pair: Pair = s.pair()
            t0 = time.monotonic()
            print(f"== {name}", flush=True)
            STEPS[name](*pair.both())
            check(s, name, t0, report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
