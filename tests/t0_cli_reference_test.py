"""docs/cli.md, the command-line reference, is generated from the CLI and must stay current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"
REGENERATE = ".venv/bin/typer vfile.cli utils docs --name vfile --output docs/cli.md"


def test_committed_cli_reference_is_current(tmp_path: Path) -> None:
    out = tmp_path / "cli.md"
    typer = Path(sys.executable).parent / "typer"
    r = subprocess.run([str(typer), "vfile.cli", "utils", "docs", "--name", "vfile",
                        "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert DOC.read_text() == out.read_text(), f"docs/cli.md is stale: run `{REGENERATE}`"


def test_reference_names_every_command() -> None:
    text = DOC.read_text()
    for cmd in ("mount", "unmount", "status", "quiesce", "resume", "drain", "scan",
                "appliance serve", "journal list", "quarantine restore"):
        assert f"## `vfile {cmd}`" in text or f"### `vfile {cmd}`" in text, cmd
