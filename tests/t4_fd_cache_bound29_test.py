"""`vfile mount --fd-cache` has `[mount] fd_cache`'s range (q29).

b27 gave the configuration key a range (16 to 2^20, the kernel's default nr_open): an
`fd_cache` of 2^32 in the file is exit 3. The command-line option for the same setting
had only its minimum (typer's `min=16`): `vfile mount --fd-cache 4294967296` mounted
and served (seen on main: the mount came up and this test ran into its deadline). It is
now exit 2 naming the option and the configuration's range, and nothing is mounted.
"""

from __future__ import annotations

import subprocess

from conftest import Tree
from mounting import force_unmount, is_mounted, mounted, vfile_cmd

from vfile.errors import Exit

#: a usage error takes a second; on main the mount served until this ran out
DEADLINE = 30


def _mount(tree: Tree, fd_cache: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(vfile_cmd("mount", "--foreground", "--no-scan", "--fd-cache",
                                        fd_cache, "--", str(tree.source), str(tree.mountpoint)),
                              capture_output=True, text=True, timeout=DEADLINE, check=False)
    except subprocess.TimeoutExpired:
        mounted = is_mounted(tree.mountpoint)
        force_unmount(tree.mountpoint)
        raise AssertionError(f"--fd-cache {fd_cache} was taken: still running after "
                             f"{DEADLINE}s, mounted: {mounted}") from None
    finally:
        force_unmount(tree.mountpoint)


def test_an_fd_cache_past_the_configurations_range_is_refused(tree: Tree) -> None:
    for value in ("4294967296", "1048577"):
        res = _mount(tree, value)
        assert res.returncode == Exit.USAGE, (res.returncode, res.stdout, res.stderr)
        assert "--fd-cache must be between 16 and" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert not is_mounted(tree.mountpoint)


def test_the_bounds_are_still_taken(tree: Tree) -> None:
    """The lowest stays typer's `min` (its own message); the highest mounts."""
    low = _mount(tree, "15")
    assert low.returncode == Exit.USAGE and "--fd-cache" in low.stderr, low.stderr
    (tree.source / "a.txt").write_text("served")
    with mounted(tree.source, tree.mountpoint, "--no-scan", "--fd-cache", "1048576"):
        assert (tree.mountpoint / "a.txt").read_text() == "served"
