"""`vfile mount`, `vfile unmount`, `vfile demo`."""

from __future__ import annotations

from vfile.cli._app import app


@app.command()
def version() -> None:
    """Print vfile's version."""
    import vfile

    print(vfile.__version__)
