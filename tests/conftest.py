"""Every shared fixture: directories and a live passthrough mount, a lifecycle
tree (tests/lifecycle.py), sample files and the real appliances (tests/servers.py).

The helpers behind them are plain modules in tests/ (on sys.path: pytest's
rootdir-relative imports), never test modules.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from lifecycle import Tree
from mounting import Server, mounted
from servers import (
    Builtin,
    Cicap,
    Clamd,
    Samples,
    make_samples,
    running_builtin,
    running_cicap,
    running_clamd,
)
from statedisks import small_state  # noqa: F401 - a fixture (the full-journal tests)


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


@pytest.fixture
def tree() -> Iterator[Tree]:
    """A tree under /tmp (0755) that second uids can reach; the source is 0777 (they
    create files through the mount). The test must leave no mount behind."""
    root = Path(tempfile.mkdtemp(prefix="vfile-t4l-", dir="/tmp"))
    os.chmod(root, 0o755)
    source, mnt, state = root / "src", root / "mnt", root / "state"
    source.mkdir()
    os.chmod(source, 0o777)
    mnt.mkdir()
    try:
        yield Tree(root, source, mnt, state)
    finally:
        with open("/proc/self/mounts") as f:
            assert f" {mnt} " not in f.read(), "a test left its mount behind"
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """EICAR, a generated infected file, a clean file, and their signature directory."""
    return make_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory, samples: Samples) -> Iterator[Clamd]:
    with running_clamd(tmp_path_factory.mktemp("clamd"), samples.sigdir) as server:
        yield server


@pytest.fixture(scope="session")
def cicap_server(tmp_path_factory: pytest.TempPathFactory, clamd_server: Clamd) -> Iterator[Cicap]:
    with running_cicap(clamd_server.socket_path, tmp_path_factory.mktemp("cicap")) as server:
        yield server


@pytest.fixture
async def builtin(tmp_path: Path, samples: Samples) -> AsyncIterator[Builtin]:
    """The built-in appliance in-process (per test), with the samples' signatures."""
    async with running_builtin(tmp_path, samples.sigdir) as server:
        yield server
