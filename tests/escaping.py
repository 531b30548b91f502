"""The mount of the escape-route tests (tests/t4_escape_test.py, issue 13; and
t5_attack29_taint_test.py): the issue's configuration, a `tmp/**` profile with
`triggers = []`, a closed `uploads/**` profile, and a safe default with
`max_size = "1MiB"`; the appliance is the built-in one as a process (fault switchable
at run time)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lifecycle import Tree, cli, tree_config
from mounting import Server, mounted
from outage import Proc, running_appliance

PROFILES = """
[[profile]]
name = "tmp"
paths = ["tmp/**"]
triggers = []

[[profile]]
name = "uploads"
paths = ["uploads/**"]
fail_mode = "closed"
infected_action = "deny"
deadline = "2s"

[[profile]]
name = "default"
fail_mode = "safe"
max_size = "1MiB"
infected_action = "deny"
deadline = "2s"
"""


@contextmanager
def escape_mount(tree: Tree, fault: str = "none",
                 profiles: str = PROFILES) -> Iterator[tuple[Proc, Server]]:
    for d in ("tmp", "uploads"):
        (tree.source / d).mkdir(exist_ok=True)
    with running_appliance(fault=fault) as app:
        conf = tree_config(tree, app, profiles)
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)) as server:
            yield app, server


def read_errno(path: Path) -> tuple[int, bytes]:
    """(0, content) if `path` can be read, else (errno, b"")."""
    try:
        return 0, path.read_bytes()
    except OSError as err:
        return err.errno or -1, b""


@contextmanager
def quiesced(mnt: Path) -> Iterator[None]:
    res = cli("quiesce", str(mnt), "--max", "5m")
    assert res.returncode == 0, res.stderr
    try:
        yield
    finally:
        assert cli("resume", str(mnt)).returncode == 0
