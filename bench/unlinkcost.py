"""What dropping a file's verdicts with its last name costs `rm -rf` (m27).

    .venv/bin/python bench/unlinkcost.py --other /tmp/pre [--files 3000] [--rounds 3]

`--other`: a tree of another vfile version (e.g. `git archive COMMIT | tar x -C
/tmp/pre`), run by this interpreter with PYTHONPATH pointing at it. Per round, this
version and the other, alternating which goes first: a fresh scanning mount, `--files`
small files written through it (100 directories), settled, then `rm -rf` of the tree
timed, and the journal's verdicts read after it (status). Medians and their ratio.
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


def one(code: Path, files: int, work: Path) -> tuple[float, int]:
    base = Path(tempfile.mkdtemp(prefix="unlink-", dir=work))
    src, mnt, state = base / "src", base / "mnt", base / "state"
    src.mkdir()
    mnt.mkdir()
    env = {"PYTHONPATH": str(code)}
    try:
        with mounted(src, mnt, "--state-dir", str(state), env=env):
            for i in range(files):
                d = mnt / "x" / f"d{i % 100:02d}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i:06d}").write_bytes(b"file %d\n" % i * (1 + i % 9))
            wait_settled(mnt)
            t = time.monotonic()
            subprocess.run(["rm", "-rf", str(mnt / "x")], check=True)
            took = time.monotonic() - t
            time.sleep(1)
            left = control.call(mnt, "status", timeout=30)["journal"]["verdicts"]
            return took, int(left)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--other", type=Path, required=True)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/m27u"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    os.chdir(a.work)  # `python -m vfile` puts its cwd first on sys.path: not a vfile tree
    runs: dict[str, list[float]] = {"this": [], "other": []}
    for r in range(a.rounds):
        order = [("this", HERE), ("other", a.other)]
        for name, code in order if r % 2 == 0 else order[::-1]:
            took, left = one(code, a.files, a.work)
            runs[name].append(took)
            print(f"round {r} {name}: rm -rf {took:.2f} s, journal verdicts after: {left}",
                  flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"median rm -rf s: this {med['this']:.2f}, other {med['other']:.2f}, "
          f"this/other {med['this'] / med['other']:.2f}")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
