"""Differential test: random sequences of file operations applied to a native
directory and through a vfile mount give the same results, the same errnos
and the same final tree.

One mount for the module; each hypothesis example works in a fresh pair of
subdirectories. Names come from a tiny alphabet so operations collide
(rename onto, link to an existing name, rmdir of a non-empty directory...).
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mounting import Server, mounted

pytestmark = pytest.mark.mount

NAMES = ["a", "b", "d/a", "d/b", "d", "e", "d/e/a"]
name = st.sampled_from(NAMES)
data = st.binary(min_size=0, max_size=300)
offset = st.sampled_from([0, 1, 100, 4095, 4096, 4097, 70000]) | st.integers(0, 10000)
mode = st.sampled_from([0o600, 0o644, 0o755, 0o700, 0o444])

# Each operation: (label, arguments); `apply` runs it under a base directory.
op = st.one_of(
    st.tuples(st.just("create"), name, data),
    st.tuples(st.just("write_at"), name, offset, data),
    st.tuples(st.just("truncate"), name, offset),
    st.tuples(st.just("mkdir"), name),
    st.tuples(st.just("rmdir"), name),
    st.tuples(st.just("unlink"), name),
    st.tuples(st.just("rename"), name, name),
    st.tuples(st.just("link"), name, name),
    st.tuples(st.just("symlink"), st.sampled_from(["a", "../a", "d", "nowhere"]), name),
    st.tuples(st.just("chmod"), name, mode),
    st.tuples(st.just("read"), name),
    st.tuples(st.just("listdir"), st.sampled_from([".", "d", "d/e"])),
    st.tuples(st.just("stat"), name),
)


def _write_at(p: str, off: int, buf: bytes) -> int:
    fd = os.open(p, os.O_WRONLY)
    try:
        return os.pwrite(fd, buf, off)
    finally:
        os.close(fd)


def _create(p: str, buf: bytes) -> int:
    with open(p, "wb") as f:
        return f.write(buf)


def _read(p: str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def _stat(p: str) -> tuple[int, int, int]:
    s = os.lstat(p)
    return (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_nlink) if stat.S_ISDIR(
        s.st_mode) else (s.st_mode, s.st_size, s.st_nlink)


OPS: dict[str, Callable[..., Any]] = {
    "create": _create,
    "write_at": _write_at,
    "truncate": os.truncate,
    "mkdir": os.mkdir,
    "rmdir": os.rmdir,
    "unlink": os.unlink,
    "rename": os.rename,
    "link": lambda a, b: os.link(a, b, follow_symlinks=False),
    "symlink": os.symlink,
    "chmod": os.chmod,
    "read": _read,
    "listdir": lambda p: sorted(os.listdir(p)),
    "stat": _stat,
}
PATH_ARGS = {"create": (0,), "write_at": (0,), "truncate": (0,), "mkdir": (0,),
             "rmdir": (0,), "unlink": (0,), "rename": (0, 1), "link": (0, 1),
             "symlink": (1,), "chmod": (0,), "read": (0,), "listdir": (0,), "stat": (0,)}


def apply(base: Path, operation: tuple[Any, ...]) -> object:
    label, *args = operation
    args = [str(base / a) if i in PATH_ARGS[label] else a for i, a in enumerate(args)]
    try:
        return ("ok", OPS[label](*args))
    except OSError as exc:
        return ("errno", exc.errno)


def tree(base: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            s = os.lstat(p)
            rel = str(p.relative_to(base))
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("dir", stat.S_IMODE(s.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(s.st_mode), s.st_nlink, p.read_bytes()
                            if s.st_mode & 0o400 else s.st_size)
    return out


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Path, Server]]:
    base = Path(tempfile.mkdtemp(prefix="vfile-diff-"))
    try:
        for d in ("native", "src", "mnt"):
            (base / d).mkdir()
        with mounted(base / "src", base / "mnt") as server:
            yield base / "native", server
    finally:
        shutil.rmtree(base, ignore_errors=True)


_example = itertools.count()

#: Every example starts from this tree, so most random operations hit something.
SEED = [("mkdir", "d"), ("mkdir", "d/e"), ("create", "a", b"alpha" * 1000),
        ("create", "d/a", b"x"), ("create", "d/e/a", b""), ("symlink", "a", "e")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=25))
def test_mount_behaves_like_the_native_directory(pair: tuple[Path, Server],
                                                 ops: list[tuple[Any, ...]]) -> None:
    native_root, server = pair
    n = next(_example)
    native, ours = native_root / f"x{n}", server.mountpoint / f"x{n}"
    native.mkdir()
    ours.mkdir()
    old = os.umask(0o022)
    try:
        for operation in [*SEED, *ops]:
            expected, got = apply(native, operation), apply(ours, operation)
            assert got == expected, f"{operation}: native {expected}, vfile {got}"
        assert tree(ours) == tree(native)
        assert tree(server.source / f"x{n}") == tree(native)
    finally:
        os.umask(old)
