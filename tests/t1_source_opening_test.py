"""`Source.opening`: the drain batch's opens share each parent directory's walk, and
refuse exactly what `Source.open` refuses (symlinks, `..`, a file gone)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfile.filter.source import Source


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Source]]:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for name in ("a/one", "a/two", "a/b/three", "top"):
        (src / name).write_text(name)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret")
    (src / "link").symlink_to(tmp_path / "outside")
    (src / "a" / "flink").symlink_to(src / "top")
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield src, Source(fd)
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 100, 0).decode()
    finally:
        os.close(fd)


def test_opens_every_file_and_closes_its_directories(tree: tuple[Path, Source]) -> None:
    _, source = tree
    before = len(os.listdir("/proc/self/fd"))
    with source.opening() as open_source:
        got = [_read(open_source(p)) for p in ("a/one", "a/two", "a/b/three", "top",
                                               "./a//one")]
    assert got == ["a/one", "a/two", "a/b/three", "top", "a/one"]
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("path", ["link/secret", "a/flink", "../src/top", "a/../top",
                                  "a/missing", ""])
def test_refuses_what_open_refuses(tree: tuple[Path, Source], path: str) -> None:
    _, source = tree
    with pytest.raises(OSError):
        _read(source.open(path))
    with source.opening() as open_source:
        _read(open_source("a/one"))  # its directory is walked and kept first
        with pytest.raises(OSError):
            _read(open_source(path))

