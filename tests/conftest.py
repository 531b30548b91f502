"""Shared fixtures: a source directory, a mountpoint, and a live vfile mount."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Server, mounted


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@pytest.fixture
def vfile_mount(source: Path, mountpoint: Path) -> Iterator[Server]:
    """A passthrough mount of `source` on `mountpoint` (allow_other, so tests
    can act as a second user)."""
    with mounted(source, mountpoint, "-o", "allow_other") as server:
        yield server
