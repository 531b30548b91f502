"""The vfile demo: mount the sample data, look around through the mount, unmount.

Run it with `make demo` (which sets everything up first). It uses the real
command line, exactly as a user would:

    vfile mount examples/sample-data MOUNTPOINT
    ... list and read files through MOUNTPOINT ...
    vfile unmount MOUNTPOINT

The mount is always taken down, even if a step fails. Later steps of the
project grow this into the full demo (scanning, an appliance outage, the
deferred-scan journal and its drain).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "sample-data"


def vfile(*args: str) -> None:
    print(f"$ vfile {' '.join(args)}")
    subprocess.run([sys.executable, "-m", "vfile", *args], check=True)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="vfile-demo-"))
    mnt = work / "mnt"
    mnt.mkdir()
    log = work / "server.log"
    try:
        vfile("mount", str(SAMPLE), str(mnt), "--log-file", str(log))
        print(f"\nmounted {SAMPLE} on {mnt}\n")

        print("files seen through the mount:")
        for dirpath, dirnames, filenames in os.walk(mnt):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                print(f"  {path.relative_to(mnt)}  ({path.stat().st_size} bytes)")

        print("\nreading hello.txt through the mount:")
        for line in (mnt / "hello.txt").read_text().splitlines():
            print(f"  | {line}")

        same = all((mnt / p).read_bytes() == (SAMPLE / p).read_bytes()
                   for p in ("hello.txt", "inventory.csv", "docs/guide.txt"))
        print(f"\ncontent through the mount equals the source: {same}")

        scratch = mnt / "demo-scratch.txt"
        scratch.write_text("written through the mount\n")
        print(f"wrote {scratch.name} through the mount; in the source it reads: "
              f"{(SAMPLE / scratch.name).read_text().strip()!r}")
        scratch.unlink()
        print(f"removed it again; still in the source: {(SAMPLE / scratch.name).exists()}")
        print()
        if not same:
            return 1
    finally:
        if is_mounted(mnt):
            vfile("unmount", str(mnt))
        print(f"unmounted: {not is_mounted(mnt)}")
        (SAMPLE / "demo-scratch.txt").unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        mnt.rmdir()
        work.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
