"""`--cache-timeout`: how long the kernel keeps names and attributes without asking.

The default (1 s) makes a change made to the source behind the mount's back
visible within a second; a longer timeout trades that for faster stat and open
(Benchmarks, "Data path against the FUSE stack's limit"). Both sides are shown
through real mounts: a mode changed behind the mount's back is seen after the
default second and not seen within a 60 s timeout, while a change made through
the mount and the drain's own removal of an infected name are seen at once.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
from lifecycle import Tree, drained, tree_config, wait_until
from mounting import mounted, vfile_cmd
from outage import running_appliance

from vfile.errors import Exit
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount


def _chmod_behind_the_back(source: Path, mnt: Path) -> int:
    """Stat `f` through the mount, chmod it in the source, wait past the default
    timeout; the mode the mount reports then. (Not the size or times: with the
    writeback cache the kernel keeps its own for a file it has cached.)"""
    assert (mnt / "f").stat().st_mode & 0o777 == 0o644
    os.chmod(source / "f", 0o600)
    time.sleep(1.5)  # past the default 1 s, far inside 60 s
    return (mnt / "f").stat().st_mode & 0o777


def test_the_default_sees_a_change_behind_the_back_within_a_second(
        source: Path, mountpoint: Path) -> None:
    (source / "f").write_bytes(b"hello")
    os.chmod(source / "f", 0o644)
    with mounted(source, mountpoint, "--no-scan"):
        assert _chmod_behind_the_back(source, mountpoint) == 0o600


def test_a_long_cache_timeout_keeps_what_the_kernel_knows(source: Path, mountpoint: Path) -> None:
    (source / "f").write_bytes(b"hello")
    os.chmod(source / "f", 0o644)
    with mounted(source, mountpoint, "--no-scan", "--cache-timeout", "60"):
        assert _chmod_behind_the_back(source, mountpoint) == 0o644  # not asked again
        os.chmod(mountpoint / "f", 0o640)  # a change through the mount is seen
        assert (mountpoint / "f").stat().st_mode & 0o777 == 0o640
        assert (source / "f").stat().st_mode & 0o777 == 0o640


def test_the_drain_still_removes_an_infected_name_at_once(tree: Tree) -> None:
    with running_appliance(fault="refuse") as app:
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(tree.source, tree.mountpoint, "--config", str(conf),
                     "--cache-timeout", "60"):
            (tree.mountpoint / "bad.com").write_bytes(EICAR)  # deferred in the outage
            assert (tree.mountpoint / "bad.com").stat().st_size == len(EICAR)
            app.set_fault("none")
            wait_until(lambda: drained(tree.mountpoint), "the journal drained")
            with pytest.raises(OSError) as err:
                os.stat(tree.mountpoint / "bad.com")
            assert err.value.errno == errno.ENOENT


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "86401", "soon"])
def test_bad_cache_timeouts_are_refused(source: Path, mountpoint: Path, value: str) -> None:
    res = subprocess.run(vfile_cmd("mount", str(source), str(mountpoint), "--foreground",
                                   "--no-scan", "--cache-timeout", value),
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == Exit.USAGE, res.stderr
    assert "--cache-timeout" in res.stderr or "cache-timeout" in res.stderr
    assert not os.path.ismount(mountpoint)
