"""Patch a mount server a test starts (a fault the kernel or a disk gives only now and
then, made certain): `mounted(..., env=patched(tmp_path, CODE))` runs CODE in the
server at start-up, before it imports vfile's modules for the mount, through
tests/serverpatch/sitecustomize.py. CODE patches module attributes (read at call
time), and says in the server's log that it did, so a test can check it took."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent


def patched(where: Path, code: str) -> dict[str, str]:
    """The environment for a server that runs `code` at start (written under `where`)."""
    path = where / "server_patch.py"
    path.write_text(textwrap.dedent(code))
    paths = [str(HERE / "serverpatch"), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "VFILE_TEST_PATCH": str(path)}
