"""Every module fits in one reading: at most 500 lines (STYLE.md, issue 12).
A module that grows past it owns two things: split it along that seam."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vfile", "scanner", "journal")
MAX_LINES = 500


def _lines() -> dict[str, int]:
    # vfile/scanner and vfile/journal are symlinks to the top-level folders: count each once.
    files = {p.resolve() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in files}


def test_no_module_over_the_limit() -> None:
    over = {name: n for name, n in _lines().items() if n > MAX_LINES}
    assert over == {}

