"""The `vfile` command line: the only package that imports typer.

Each `cmd_*` module registers its commands on the app from `_app` when
imported; this module imports them all and exposes `main`.
"""

from __future__ import annotations

from vfile.cli import (  # noqa: F401  (registers commands)
    cmd_appliance,
    cmd_cache,
    cmd_control,
    cmd_journal,
    cmd_mount,
    cmd_prewarm,
    cmd_scan,
    cmd_simulate,
)
from vfile.cli._app import app


def main() -> None:
    app()
