"""A mount tree that other uids can reach, and the vfile CLI run as them.

    tree_config(tree, app, body)   # config: app, the tree's state dir, quick probes
    cli("journal", "list", ...)    # the CLI as root, or as `uid=` after its imports
    as_user(uid, "cat", path)      # any command as a real second uid

The `tree` fixture (conftest.py) makes a `Tree` in a 0755 directory under /tmp
(pytest's tmp_path is in a 0700 tree the second uids cannot enter). Second
users are real uids (`setpriv`, or a python that drops privileges after its
imports: the interpreter lives under /root, which is 0700). The appliance is
tests/outage.py's `running_appliance`, whose fault switch waits until the
appliance confirms it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mounting import vfile_cmd, wait_for
from outage import Proc, status

WRITER_UID = 1000
READER_UID = 1001
NOBODY = 65534
#: generous "does not hang" deadline for anything that should happen in about a second
SOON = 20.0


@dataclass
class Tree:
    root: Path
    source: Path
    mountpoint: Path
    state: Path


def wait_until(cond: Callable[[], object], what: str, deadline: float = SOON) -> None:
    wait_for(what, cond, deadline)


def tree_config(tree: Tree, appliance: Proc, body: str = "") -> Path:
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


def drained(mnt: Path) -> bool:
    """The journal is empty, the drain has counted every file it resolved, and no
    write intent is left: it removes an entry before it counts the outcome (an
    infected action may run in between), so `deferred == 0` alone may be read before
    `done` is; and a new file has no entry at all until its close scan gave up (cw23:
    it is only in flight), so an empty journal read before that scan ran says nothing
    about the file (seen under load: the stat that follows found it still there)."""
    st = status(mnt)
    return bool(st["journal"]["deferred"] == 0 and st["drain"]["in_flight"] == 0
                and st["gate"]["pending_intents"] == 0)


def journal_rows(mnt: Path) -> list[dict[str, Any]]:
    res = cli("journal", "list", "--mount", str(mnt), "--json")
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows
