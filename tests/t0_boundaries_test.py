"""The package boundaries of DESIGN.md, checked so they stay true.

import-linter checks the internal contracts declared in pyproject.toml
(scanner and journal are leaves; the runtime over filter/passthrough over the leaves). The
third-party rules (only the CLI imports typer; only the FUSE and mount modules
import pyfuse3) are checked here on the AST of every module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vfile", "scanner", "journal")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules() -> list[Path]:
    # vfile/scanner and vfile/journal are symlinks to the top-level folders: count each file once.
    return sorted({p.resolve() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")})


def test_only_cli_imports_typer() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _modules()
                 if "typer" in _imports(p)
                 and p.relative_to(ROOT).parts[:2] != ("vfile", "cli")]
    assert offenders == []


def test_only_fs_and_mount_import_pyfuse3() -> None:
    allowed = {("vfile", "passthrough"), ("vfile", "mount.py")}
    offenders = [str(p.relative_to(ROOT)) for p in _modules()
                 if "pyfuse3" in _imports(p) and p.relative_to(ROOT).parts[:2] not in allowed]
    assert offenders == []


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
