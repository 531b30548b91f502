"""The deferral lifecycle through real mounts: an outage, the return, the drain.

A real built-in appliance runs as a process whose fault is switched at run
time (`--fault-file` + SIGUSR1); the mount is a real `vfile mount` subprocess;
second users are real uids (`setpriv`, or a python that drops privileges
after its imports: the interpreter lives under /root, which is 0700). The
trees live in a 0755 directory under /tmp so those uids can reach them
(pytest's tmp_path is in a 0700 tree).

The helpers here are shared by the other t4_lifecycle_* modules.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mounting import mounted, vfile_cmd, wait_for
from outage import Proc, running_appliance

from vfile.errors import Exit
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

WRITER_UID = 1000
READER_UID = 1001
NOBODY = 65534
#: generous "does not hang" deadline for anything that should happen in about a second
SOON = 20.0


# --- helpers (shared with t4_lifecycle_*_test.py) ------------------------------------------


@dataclass
class Tree:
    root: Path
    source: Path
    mountpoint: Path
    state: Path


@pytest.fixture
def tree() -> Iterator[Tree]:
    root = Path(tempfile.mkdtemp(prefix="vfile-t4l-", dir="/tmp"))
    os.chmod(root, 0o755)
    source, mnt, state = root / "src", root / "mnt", root / "state"
    source.mkdir()
    os.chmod(source, 0o777)  # the second uids create files here through the mount
    mnt.mkdir()
    try:
        yield Tree(root, source, mnt, state)
    finally:
        with open("/proc/self/mounts") as f:
            assert f" {mnt} " not in f.read(), "a test left its mount behind"
        shutil.rmtree(root, ignore_errors=True)


#: The one appliance launcher (tests/outage.py): a fault switch waits until the
#: appliance confirms it in its log, for every kind of fault.
ApplianceProc = Proc


@contextlib.contextmanager
def appliance_process(where: Path, fault: str = "none") -> Iterator[ApplianceProc]:
    """`vfile appliance serve` on a unix socket, started healthy, then given `fault`."""
    del where  # the launcher keeps its socket in a short path of its own
    with running_appliance() as app:
        if fault != "none":
            app.set_fault(fault)
        yield app


def wait_until(cond: Callable[[], object], what: str, deadline: float = SOON) -> None:
    wait_for(what, cond, deadline)


def write_config(tree: Tree, appliance: ApplianceProc, body: str = "") -> Path:
    """A config with the appliance, the tree's state dir and quick probes; `body`
    adds profiles (a `default` profile in it replaces the implicit one)."""
    conf = tree.root / "vfile.toml"
    conf.write_text(f'[mount]\nappliances = ["{appliance.url}"]\nstate_dir = "{tree.state}"\n'
                    f'quarantine_dir = "{tree.root / "quarantine"}"\n'
                    '[pool]\nprobe_interval = "200ms"\nbreaker_cooldown = "500ms"\n'
                    f'attempt_timeout = "1s"\n{body}')
    return conf


_AS_UID = """
import os, sys, click, typer
from vfile.cli import app
import vfile.journal.records  # commands import the journal (and trio) themselves: load it now
uid, args = int(sys.argv[1]), sys.argv[2:]
cmd = typer.main.get_command(app)
# Parse the whole command line once before dropping privileges: typer imports
# modules lazily while it builds parameters, and /root (the interpreter) is 0700.
ctx = cmd.make_context("vfile", list(args))
while isinstance(ctx.command, click.Group):
    _, sub, rest = ctx.command.resolve_command(ctx, [*ctx.protected_args, *ctx.args])
    assert sub is not None
    ctx = sub.make_context(sub.name, rest, parent=ctx)
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
cmd.main(args, prog_name="vfile")
"""


def cli(*args: str, uid: int | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the vfile CLI, as root or (dropping privileges after the imports) as `uid`."""
    cmd = vfile_cmd(*args) if uid is None else [sys.executable, "-c", _AS_UID, str(uid), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def status(mnt: Path) -> dict[str, Any]:
    res = cli("status", str(mnt), "--json")
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def as_user(uid: int, *argv: str, umask: str = "022") -> subprocess.CompletedProcess[str]:
    """A real second uid runs `argv` (setpriv: the process is the command itself)."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "sh", "-c", f'umask {umask}; exec "$@"', "sh", *argv],
                          capture_output=True, text=True, timeout=60, check=False)


def open_errno(path: Path, flags: int = os.O_RDONLY) -> int:
    """0 if `path` opens with `flags`, else the errno."""
    try:
        os.close(os.open(path, flags))
    except OSError as err:
        return err.errno or -1
    return 0


def journal_rows(mnt: Path) -> list[dict[str, Any]]:
    res = cli("journal", "list", "--mount", str(mnt), "--json")
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows


# --- drain after return ---------------------------------------------------------------------


def test_outage_exposure_trail_then_drain_quarantines(tree: Tree) -> None:
    """Appliance down: uid 1000 writes EICAR, uid 1001 reads it; both are journaled with
    who they were. The appliance comes back; the drain quarantines the file after the
    fact and names who opened it; the journal ends empty."""
    eicar = tree.root / "eicar.src"
    eicar.write_bytes(EICAR)
    os.chmod(eicar, 0o644)
    with appliance_process(tree.root, "refuse") as app:
        conf = write_config(tree, app)
        with mounted(tree.source, tree.mountpoint, "-o", "allow_other",
                     "--config", str(conf)) as server:
            target = tree.mountpoint / "drop.com"
            res = as_user(WRITER_UID, "cp", str(eicar), str(target))
            assert res.returncode == 0, res.stderr
            assert (tree.source / "drop.com").stat().st_uid == WRITER_UID
            res = as_user(READER_UID, "cat", str(target))
            assert res.returncode == 0, res.stderr  # fail-safe: allowed, journaled
            assert res.stdout.encode() == EICAR

            # Before the drain: the entry and its exposure trail, through --mount.
            rows = journal_rows(tree.mountpoint)
            assert [r["path"] for r in rows] == ["drop.com"]
            res = cli("journal", "show", "drop.com", "--mount", str(tree.mountpoint))
            assert res.returncode == 0, res.stderr
            assert f"uid={WRITER_UID} " in res.stdout and " cp" in res.stdout
            assert f"uid={READER_UID} " in res.stdout and " cat" in res.stdout
            st = status(tree.mountpoint)
            assert st["journal"]["deferred"] == 1 and st["gate"]["exposures"] >= 1
            assert not st["appliances"][0]["healthy"]

            app.set_fault("none")  # the appliance returns; the drain catches up
            wait_until(lambda: status(tree.mountpoint)["journal"]["deferred"] == 0,
                       "the journal drained")
            st = status(tree.mountpoint)
            assert st["drain"]["done"]["infected"] == 1
            assert st["journal"]["quarantined"] == 1
            assert not (tree.source / "drop.com").exists()
            assert open_errno(target) == errno.ENOENT
            res = cli("quarantine", "list", "--mount", str(tree.mountpoint), "--json")
            assert res.returncode == 0, res.stderr
            [rec] = json.loads(res.stdout)
            assert rec["original_path"] == "drop.com"
            assert Path(rec["quarantine_path"]).read_bytes() == EICAR
            assert journal_rows(tree.mountpoint) == []
            log = server.log()
        line = next(x for x in log.splitlines() if "after the fact" in x)
        assert "'drop.com'" in line
        assert f"uid {WRITER_UID} " in line and "(cp)" in line
        assert f"uid {READER_UID} " in line and "(cat)" in line


# --- the control plane refuses strangers ----------------------------------------------------


def test_non_owner_is_refused_by_the_control_plane(tree: Tree) -> None:
    with appliance_process(tree.root) as app, \
            mounted(tree.source, tree.mountpoint, "-o", "allow_other",
                    "--config", str(write_config(tree, app))):
        for args in (["status", str(tree.mountpoint)],
                     ["quiesce", str(tree.mountpoint)],
                     ["journal", "list", "--mount", str(tree.mountpoint)]):
            res = cli(*args, uid=NOBODY)
            assert res.returncode == Exit.CONTROL, (args, res.stdout, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, res.stderr
            assert f"uid {NOBODY} is neither root nor the mount's owner" in lines[0]
        assert not status(tree.mountpoint)["window"]["active"]  # the quiesce did nothing


# --- `vfile journal … --mount` on a live mount ------------------------------------------------


def test_journal_cli_through_the_control_plane(tree: Tree) -> None:
    """--mount finds the live mount's journal: reads, retry (kicks the drain), purge."""
    for name in ("a.txt", "b.txt", "c.txt"):
        (tree.source / name).write_text(f"clean {name}\n")
    with appliance_process(tree.root, "refuse") as app, \
            mounted(tree.source, tree.mountpoint, "--config", str(write_config(tree, app))):
        for name in ("a.txt", "b.txt", "c.txt"):
            assert (tree.mountpoint / name).read_text() == f"clean {name}\n"
        assert [r["path"] for r in journal_rows(tree.mountpoint)] == ["a.txt", "b.txt", "c.txt"]
        res = cli("journal", "stats", "--mount", str(tree.mountpoint), "--json")
        assert res.returncode == 0 and json.loads(res.stdout)["deferred"] == 3, res.stderr
        res = cli("journal", "export", "--mount", str(tree.mountpoint))
        assert res.returncode == 0 and res.stdout.count("\n") == 3, res.stderr
        res = cli("journal", "purge", "b.txt", "--mount", str(tree.mountpoint), "--yes")
        assert res.returncode == 0 and "1 entry purged" in res.stdout, res.stderr
        assert [r["path"] for r in journal_rows(tree.mountpoint)] == ["a.txt", "c.txt"]

        # The drain is paused; the appliance returns; a retry through the live mount
        # leaves the pause alone, and resuming drains the rest.
        res = cli("drain", str(tree.mountpoint), "pause")
        assert res.returncode == 0, res.stderr
        app.set_fault("none")
        wait_until(lambda: status(tree.mountpoint)["appliances"][0]["healthy"],
                   "the mount sees the appliance")
        res = cli("journal", "retry", "--mount", str(tree.mountpoint))
        assert res.returncode == 0 and "reset" in res.stdout, res.stderr
        assert status(tree.mountpoint)["drain"]["paused"]
        assert len(journal_rows(tree.mountpoint)) == 2
        res = cli("drain", str(tree.mountpoint), "resume")
        assert res.returncode == 0, res.stderr
        wait_until(lambda: journal_rows(tree.mountpoint) == [], "the journal drained")

        res = cli("journal", "list", "--mount", str(tree.mountpoint), "--state-dir",
                  str(tree.state))
        assert res.returncode == Exit.USAGE and "not both" in res.stderr
    res = cli("journal", "list", "--mount", str(tree.mountpoint))
    assert res.returncode == Exit.CONTROL and "no live vfile mount" in res.stderr
