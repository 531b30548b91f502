"""Real programs through a scanning mount, its server SIGKILLed mid-run (r24, README
"Attack review r24").

    .venv/bin/python scripts/real_kills.py STEP SECONDS [DIRS]
    R24_MOUNT="-o no_writeback" .venv/bin/python scripts/real_kills.py ...

STEP: rsync (`rsync -a` of DIRS x 1,000 small files, default 30, killed twice), sqlite
(4 writer processes x 3,000 rows in WAL mode), git (`clone --no-local` of trio, `gc
--aggressive`, `fsck`), gc (the clone first, the kill during `gc` and a checkout), tar
(`tar x` of /tmp/r24/big.tar: `tar cf /tmp/r24/big.tar -C /work/main .venv`). The
server is killed SECONDS after the program started, then the program is killed too;
the next start must serve with `outage.unaccounted` empty (a walk, if one was due, ran
before it served); then the program runs to its end through that start, the mount
settles, and `unaccounted` and `journal check` must be empty again. Prints one line a
stage; the directories stay under /tmp/r24 for a look.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import force_unmount, mounted
from outage import status, unaccounted
from queuedrace import wait_settled

from vfile.journal import Journal

WORK = Path("/tmp/r24")
ORIGIN = "/work/.mirror/python-trio+trio/repo"
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C",
           "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}
WRITER = ("import sqlite3,sys\nc = sqlite3.connect(sys.argv[1], timeout=60)\n"
          "for i in range(3000):\n"
          "    with c: c.execute('INSERT INTO t VALUES (?,?,?)', (int(sys.argv[2]), i, 'x'*300))\n")


def say(*what: object) -> None:
    print(*what, flush=True)


def tree(dirs: int) -> Path:
    root = WORK / f"tree{dirs}"
    if not root.exists():
        for d in range(dirs):
            (root / f"d{d:03}").mkdir(parents=True)
            for f in range(1000):
                (root / f"d{d:03}" / f"f{f:04}").write_bytes(f"{d}/{f}\n".encode() * (1 + f % 7))
    return root


def command(step: str, d: Path, dirs: int) -> str:
    """The shell command of `step`, run in `d` (a fresh directory in the mount)."""
    if step == "rsync":
        return f"rsync -a {tree(dirs)}/ in/"
    if step == "sqlite":
        subprocess.run(["sqlite3", str(d / "t.db"), "PRAGMA journal_mode=WAL; "
                        "CREATE TABLE t(w INT, i INT, v TEXT);"], check=True, capture_output=True)
        return " & ".join(f'{sys.executable} -c "{WRITER}" t.db {w}' for w in range(4)) + " & wait"
    clone = f"git clone -q --no-local {ORIGIN} clone"
    if step == "git":
        return f"{clone} && cd clone && git gc -q --aggressive && git fsck --strict"
    if step == "gc":
        subprocess.run(clone, shell=True, cwd=d, env={**os.environ, **GIT_ENV}, check=True)
        return ("cd clone && git gc -q --aggressive && git fsck --strict && "
                "git checkout -q HEAD~300 && git checkout -q main")
    if step == "tar":
        return f"tar xf {WORK / 'big.tar'}"
    raise SystemExit(f"no step {step!r}")


def start(step: str, mnt: Path, run: str, dirs: int) -> subprocess.Popen[str]:
    d = mnt / run
    d.mkdir(exist_ok=True)
    return subprocess.Popen(command(step, d, dirs), shell=True, cwd=d, text=True,
                            env={**os.environ, **GIT_ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def main() -> None:
    step, after = sys.argv[1], float(sys.argv[2])
    dirs = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    base = WORK / f"kill_{step}"
    subprocess.run(["rm", "-rf", str(base)], check=True)
    for sub in ("src", "mnt", "state"):
        (base / sub).mkdir(parents=True)
    os.chmod(base, 0o755)
    src, mnt, state = base / "src", base / "mnt", base / "state"
    args = ("--state-dir", str(state), *os.environ.get("R24_MOUNT", "").split())
    sig = ""
    for kill in range(2 if step == "rsync" else 1):
        with mounted(src, mnt, *args) as server:
            text = server.log()
            if sig:
                say(f"{step}: start after kill {kill}: walked {'recovery walk' in text}, "
                    f"unaccounted {unaccounted(src, state, sig)[:10]}")
            run = start(step, mnt, "run0" if step != "rsync" else "", dirs)
            time.sleep(after)
            s = status(mnt)
            sig = s["appliances"][0]["sig_version"]
            say(f"{step}: kill {kill + 1} at {after:g} s: in_flight "
                f"{s['journal']['durability']['in_flight']}, unrecorded "
                f"{s['gate']['new_files_unrecorded']}, intents {s['gate']['pending_intents']}, "
                f"files {sum(len(f) for _, _, f in os.walk(src))}")
            server.proc.kill()
            server.proc.wait(30)
            force_unmount(mnt)
            os.killpg(run.pid, 9)
            run.wait(60)
    say(f"{step}: before the restart (a walk due or not): "
        f"{len(unaccounted(src, state, sig))} unaccounted")
    with mounted(src, mnt, *args) as server:
        text = server.log()
        say(f"{step}: restarted: walked {'recovery walk' in text}, "
            f"unaccounted {unaccounted(src, state, sig)[:10]}",
            *[line[-120:] for line in text.splitlines() if "recovery walk" in line][:1])
        t = time.monotonic()
        rc = start(step, mnt, "run1" if step != "rsync" else "", dirs).wait(3600)
        say(f"{step}: again to the end: exit {rc}, {time.monotonic() - t:.0f} s")
        if step == "sqlite":
            for run in ("run0", "run1"):
                r = subprocess.run(["sqlite3", str(mnt / run / "t.db"), "PRAGMA integrity_check;"
                                    " SELECT count(*) FROM t;"], capture_output=True, text=True,
                                   check=False)
                say(f"   {run}: {r.stdout.split()}")
        if step == "rsync":
            r = subprocess.run(["diff", "-r", str(tree(dirs)), str(src / "in")],
                               capture_output=True, text=True, check=False)
            say("   diff -r (rsync's own temporaries of the killed runs aside):",
                [line for line in r.stdout.splitlines()
                 if not line.startswith("Only in") or ": ." not in line][:5])
        wait_settled(mnt)
        s = status(mnt)
        say(f"{step}: settled: unaccounted "
            f"{unaccounted(src, state, s['appliances'][0]['sig_version'])[:10]}, "
            f"denials {s['gate']['denials']}")
    with Journal.open(state, readonly=True) as j:
        say(f"{step}: journal check {j.check()[:5]}")


if __name__ == "__main__":
    main()
