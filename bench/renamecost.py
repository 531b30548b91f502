"""What dropping a replaced file's verdicts costs a rename over it (a29).

    .venv/bin/python bench/renamecost.py --other /tmp/pre [--files 2000] [--rounds 3]

`--other`: a tree of another vfile version (e.g. `git archive COMMIT | tar x -C
/tmp/pre`), run by this interpreter with PYTHONPATH pointing at it. Per round, this
version and the other, alternating which goes first: a fresh scanning mount,
`--files` small files and as many new versions of them written through it (20
directories), settled, then every new version renamed over its file (`mv new old`,
as an editor's save or rsync does) timed, and the journal's verdicts read after it
(status). Medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    base = Path(tempfile.mkdtemp(prefix="rename-", dir=work))
    src, mnt, state = base / "src", base / "mnt", base / "state"
    src.mkdir()
    mnt.mkdir()
    env = {"PYTHONPATH": str(code)}
    try:
        with mounted(src, mnt, "--state-dir", str(state), env=env):
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
            time.sleep(1)
            left = control.call(mnt, "status", timeout=30)["journal"]["verdicts"]
            return took, int(left)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--other", type=Path, required=True)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/a29r"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    os.chdir(a.work)  # `python -m vfile` puts its cwd first on sys.path: not a vfile tree
    runs: dict[str, list[float]] = {"this": [], "other": []}
    for r in range(a.rounds):
        order = [("this", HERE), ("other", a.other)]
        for name, code in order if r % 2 == 0 else order[::-1]:
            took, left = one(code, a.files, a.work)
            runs[name].append(took)
            print(f"round {r} {name}: {a.files} renames over {took:.2f} s, journal verdicts "
                  f"after: {left}", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"median renames s: this {med['this']:.2f}, other {med['other']:.2f}, "
          f"this/other {med['this'] / med['other']:.2f}")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
