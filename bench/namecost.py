"""What dropping a file's verdicts with its last name costs the name operation that
takes it: `rm -rf` of a tree (m27) or `mv new old` over every file (a29).

    .venv/bin/python bench/namecost.py --other /tmp/pre --op unlink [--files 3000] [--rounds 3]
    .venv/bin/python bench/namecost.py --other /tmp/pre --op rename [--files 2000] [--rounds 3]

`--other`: a tree of another vfile version (e.g. `git archive COMMIT | tar x -C
/tmp/pre`), run by this interpreter with PYTHONPATH pointing at it. Per round, this
version and the other, alternating which goes first: a fresh scanning mount and
`--files` small files written through it, settled; then, timed, `--op unlink`: `rm -rf`
of the tree (100 directories); `--op rename`: as many new versions written (20
directories), settled, and every new version renamed over its file (as an editor's
save or rsync does). The journal's verdicts are read after it (status). Medians and
their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))
sys.path.insert(0, str(HERE))
from mounting import mounted  # type: ignore[import-not-found]  # noqa: E402
from queuedrace import wait_settled  # type: ignore[import-not-found]  # noqa: E402

from vfile import control  # noqa: E402


def _unlink(mnt: Path, files: int) -> float:
    for i in range(files):
        d = mnt / "x" / f"d{i % 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}").write_bytes(b"file %d\n" % i * (1 + i % 9))
    wait_settled(mnt)
    t = time.monotonic()
    subprocess.run(["rm", "-rf", str(mnt / "x")], check=True)
    return time.monotonic() - t


def _rename(mnt: Path, files: int) -> float:
    pairs = []
    for i in range(files):
        d = mnt / f"d{i % 20:02d}"
        d.mkdir(exist_ok=True)
        old, new = d / f"f{i:06d}", d / f".f{i:06d}.new"
        old.write_bytes(b"old %d\n" % i * (1 + i % 9))
        new.write_bytes(b"new %d\n" % i * (1 + i % 9))
        pairs.append((new, old))
    wait_settled(mnt)
    t = time.monotonic()
    for new, old in pairs:
        os.rename(new, old)
    took = time.monotonic() - t
    wait_settled(mnt)
    return took


OPS = {"unlink": _unlink, "rename": _rename}


def one(code: Path, op: str, files: int, work: Path) -> tuple[float, int]:
    """One fresh mount of the vfile tree `code`: the operation's seconds, and the
    journal's verdicts after it."""
    base = Path(tempfile.mkdtemp(prefix=f"{op}-", dir=work))
    src, mnt, state = base / "src", base / "mnt", base / "state"
    src.mkdir()
    mnt.mkdir()
    try:
        with mounted(src, mnt, "--state-dir", str(state), env={"PYTHONPATH": str(code)}):
            took = OPS[op](mnt, files)
            time.sleep(1)
            left = control.call(mnt, "status", timeout=30)["journal"]["verdicts"]
            return took, int(left)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--other", type=Path, required=True)
    ap.add_argument("--op", choices=sorted(OPS), required=True)
    ap.add_argument("--files", type=int, default=None,
                    help="files (default: 3000 for unlink, 2000 for rename)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vfile-namecost"))
    a = ap.parse_args()
    files = a.files or (3000 if a.op == "unlink" else 2000)
    a.work.mkdir(parents=True, exist_ok=True)
    os.chdir(a.work)  # `python -m vfile` puts its cwd first on sys.path: not a vfile tree
    runs: dict[str, list[float]] = {"this": [], "other": []}
    for r in range(a.rounds):
        order = [("this", HERE), ("other", a.other)]
        for name, code in order if r % 2 == 0 else order[::-1]:
            took, left = one(code, a.op, files, a.work)
            runs[name].append(took)
            print(f"round {r} {name}: {a.op} of {files} files {took:.2f} s, journal "
                  f"verdicts after: {left}", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"median {a.op} s: this {med['this']:.2f}, other {med['other']:.2f}, "
          f"this/other {med['this'] / med['other']:.2f}")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
