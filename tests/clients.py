"""Shared by the real-client tests (tests/t4_clients_*_test.py, t4_nofollow_test.py).

Each test runs a real program twice, in a native directory and through a
scanning vfile mount (`vfile mount` defaults: the embedded built-in
appliance, fail mode safe), and compares what it sees. `Pair` gives a test
both directories; `scanning_mount` is the module-scoped mount behind it.

At the end of a module the mount must have scanned (the clients really ran
with scanning on), denied nothing (they write nothing infected), and left no
file without a journal entry or a clean verdict (`outage.unaccounted`, once
every intent ended): what rsync, tar and cpio do to modes, times and xattrs
after writing is kept since loss22 and x23 (filter/keeping.py), so real
programs are held to the promise too (x23).
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filtering import Filter
from mounting import mounted
from outage import signature_version, unaccounted
from queuedrace import wait_settled

#: Every client command gets this long; a hang fails the test instead of pytest's timeout.
CLIENT_DEADLINE = 120.0

_counter = itertools.count()


@dataclass
class Scanning(Filter):
    """A live scanning mount, its state directory, and a native twin directory."""

    native: Path

    def pair(self) -> Pair:
        """A fresh (native, mounted) pair of empty directories."""
        name = f"c{next(_counter)}"
        native = self.native / name
        native.mkdir()
        mounted_dir = self.mnt / name
        mounted_dir.mkdir()
        return Pair(native, mounted_dir, self.src / name)


@dataclass
class Pair:
    """The same place twice: `native` on the host filesystem, `mnt` through vfile
    (`src` is the mount's directory seen in the source)."""

    native: Path
    mnt: Path
    src: Path

    def both(self) -> tuple[Path, Path]:
        return self.native, self.mnt


@contextmanager
def scanning_mount(*extra: str, base: Path | None = None) -> Iterator[Scanning]:
    """A scanning mount with defaults (built-in appliance), checked when it ends.

    With `base`, the mount uses (and keeps) that directory, so a test can mount
    the same source and state again; otherwise a fresh one is removed after.
    """
    # Not under pytest's tmp dir: that is 0700, and some clients drop privileges.
    keep = base is not None
    base = base or Path(tempfile.mkdtemp(prefix="vfile-clients-"))
    try:
        os.chmod(base, 0o755)
        for sub in ("src", "mnt", "native", "state"):
            (base / sub).mkdir(exist_ok=True)
        with mounted(base / "src", base / "mnt", "--state-dir", str(base / "state"),
                     *extra) as server:
            scanning = Scanning(server, base / "state", base / "native")
            yield scanning
            wait_settled(scanning.mnt)
            gate = scanning.gate()
            sig = signature_version(scanning.state) or \
                scanning.status()["appliances"][0]["sig_version"]
            left = unaccounted(scanning.src, scanning.state, sig)
        # The clients ran with scanning on (open scans, or close scans of what they wrote:
        # a reader of a file another open is writing is journaled, not scanned, since the
        # source may not hold the writer's bytes yet), and nothing they wrote was refused.
        assert gate["scans"] + gate["close_scans"] > 0, gate
        assert gate["denials"] == 0 and gate["infections"] == 0, gate
        assert left == [], f"{len(left)} files with neither entry nor verdict: {left[:20]}"
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def run(argv: Sequence[str | os.PathLike[str]], cwd: Path | None = None,
        env: dict[str, str] | None = None, check: bool = True,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client; a non-zero exit (with `check`) fails with its output."""
    res = subprocess.run([os.fspath(a) for a in argv], cwd=cwd, capture_output=True,
                         env={**os.environ, **(env or {})}, timeout=CLIENT_DEADLINE,
                         input=stdin.decode() if stdin is not None else None,
                         text=True, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} exited {res.returncode}\nstdout:\n{res.stdout}\n"
                             f"stderr:\n{res.stderr}")
    return res


def outcome(fn: Callable[[], Any]) -> Any:
    """fn()'s value, or the errno name it raised: comparable across the two places."""
    try:
        return fn()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err.errno))


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a tree holds, comparable across two places: per relative path its type,
    mode, size, mtime (ns), content or link target, xattrs, hard-link group, owner."""
    out: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                body: Any = os.readlink(full)
                xattrs: dict[str, bytes] = {}
            else:
                body = Path(full).read_bytes() if os.path.isfile(full) else None
                xattrs = {k: os.getxattr(full, k) for k in sorted(os.listxattr(full))}
            group = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 and \
                not os.path.isdir(full) else rel
            mtime = None if os.path.isdir(full) else st.st_mtime_ns
            out[rel] = (st.st_mode, st.st_size if body is not None else None, mtime, body,
                        xattrs, group, st.st_uid, st.st_gid)
    return out
