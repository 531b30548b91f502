"""k27: profile the server's trio thread (py-spy) while one writer creates distinct 4 KiB
files; per function: us per create, inclusive and self, each contender minus `--no-scan`.

    BASELINE=/work/main RATE=200 SPYFLAGS=--gil TOP=45 \
        .venv/bin/python docs/trials/k27-trioprof.py CHECKOUT [seconds] [rounds]

py-spy is not a project dependency: `pip install py-spy` into a venv of its own.
`--gil`: only samples where the trio thread holds the GIL (not idle in epoll_wait).
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHECKOUT = Path(sys.argv[1]).resolve()
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 8
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
RATE = int(os.environ.get("RATE", "250"))
SPY = "/tmp/k27spy/bin/py-spy"
sys.path.insert(0, str(CHECKOUT))
from bench.iotiming import server_pid  # noqa: E402

base = Path(tempfile.mkdtemp(prefix="k27prof-"))
contenders = {"noscan": ["--no-scan"], "scan": []}
extra_env = {}
for spec in sys.argv[4:]:
    name, var, val = spec.split("=", 2)
    contenders[name] = []
    extra_env[name] = {**os.environ, var: val}
mounted = {}
cwds = {}
if os.environ.get("BASELINE"):
    contenders["main_scan"] = []
    cwds["main_scan"] = Path(os.environ["BASELINE"])


def writer(mnt: Path, stop: threading.Event, count: list[int]) -> None:
    d = mnt / f"w{time.monotonic_ns()}"
    d.mkdir()
    i = 0
    while not stop.is_set():
        fd = os.open(f"{d}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, os.urandom(4096))
        os.close(fd)
        i += 1
        count[0] = i


def key(f: str) -> str:
    name, _, loc = f.partition(" (")
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    return f"{name} {loc.split('site-packages/')[-1]}"


def parse(path: Path, pid: int) -> tuple[collections.Counter, collections.Counter, int]:
    incl: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not frames[0].startswith(f"thread ({pid})"):
            continue
        cnt = int(n)
        total += cnt
        seen = set()
        for f in frames[1:]:
            k = key(f)
            if k not in seen:
                incl[k] += cnt
                seen.add(k)
        if len(frames) > 1:
            self_[key(frames[-1])] += cnt
    return incl, self_, total


try:
    for name, extra in contenders.items():
        src, mnt = base / name / "src", base / name / "mnt"
        src.mkdir(parents=True)
        mnt.mkdir()
        subprocess.run([sys.executable, "-m", "vfile", "mount", "--state-dir",
                        str(base / name / "state"), "--log-file", str(base / f"{name}.log"),
                        *extra, str(src), str(mnt)], check=True, cwd=cwds.get(name, CHECKOUT),
                       env=extra_env.get(name))
        mounted[name] = mnt
    pids = {n: server_pid(m) for n, m in mounted.items()}
    res = {n: [collections.Counter(), collections.Counter(), 0, 0] for n in mounted}
    for r in range(ROUNDS):
        for name, mnt in (list(mounted.items()) if r % 2 == 0 else list(mounted.items())[::-1]):
            pid = pids[name]
            out = base / f"{name}.{r}.txt"
            stop = threading.Event()
            count = [0]
            t = threading.Thread(target=writer, args=(mnt, stop, count))
            t.start()
            time.sleep(0.5)
            c0 = count[0]
            subprocess.run([SPY, "record", "--pid", str(pid), "--rate", str(RATE), "--duration",
                            str(int(SECONDS)), "--format", "raw", "--threads",
                            *os.environ.get("SPYFLAGS", "--nonblocking").split(),
                            "--output", str(out)], check=True, capture_output=True)
            c1 = count[0]
            stop.set()
            t.join()
            time.sleep(0.3)
            incl, self_, total = parse(out, pid)
            res[name][0].update(incl)
            res[name][1].update(self_)
            res[name][2] += total
            res[name][3] += c1 - c0
            print(name, r, "creates", c1 - c0, "samples", total, flush=True)
    per = {}
    for name, (incl, self_, total, creates) in res.items():
        k = 1e6 / RATE / creates
        per[name] = ({f: v * k for f, v in incl.items()}, {f: v * k for f, v in self_.items()},
                     total * k, creates)
        print(f"{name}: creates {creates}, main-thread on-CPU us/create {total * k:.0f}")
    for kind, idx in (("INCLUSIVE", 0), ("SELF", 1)):
        for name in contenders:
            if name == "noscan":
                continue
            print(f"\n== {kind} us/create: {name} minus noscan (top 60)")
            a, b = per[name][idx], per["noscan"][idx]
            keys = set(a) | set(b)
            rows = sorted(keys, key=lambda f: -(a.get(f, 0) - b.get(f, 0)))
            for f in rows[:int(os.environ.get('TOP', '60'))]:
                x, y = a.get(f, 0), b.get(f, 0)
                print(f"{x - y:8.1f} {x:8.1f} {y:8.1f}  {f}")
finally:
    for mnt in mounted.values():
        subprocess.run([sys.executable, "-m", "vfile", "unmount", str(mnt)], check=False,
                       cwd=CHECKOUT)
    print("kept", base)
    if "per" in globals():
        (base / "per.json").write_text(json.dumps({n: list(p) for n, p in per.items()}))
