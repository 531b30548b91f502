"""The command line starts light (issue 12): freeze hooks run `vfile quiesce` and
`vfile resume` with the guest agent's timeout running, so `import vfile.cli` and
the hook commands load none of the heavy parts. A structural check (what is
imported), not a timing one; bench/cli_startup.py measures the time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: what no module imported by `import vfile.cli` may load (commands import these themselves)
HEAVY = ("trio", "lmdb", "prometheus_client", "matplotlib", "redis", "pyfuse3",
         "vfile.scanner.pool", "vfile.journal", "vfile.service", "vfile.mount",
         "vfile.filter", "vfile.control_server")

_PROBE = """
import json, sys
argv = sys.argv[1:]
try:
    if argv:
        sys.argv = ["vfile", *argv]
        from vfile.cli import main
        main()
    else:
        import vfile.cli
except SystemExit:
    pass
print("\\nMODULES " + json.dumps(sorted(sys.modules)))
"""


def _loaded(*argv: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, check=False)
    line = [x for x in r.stdout.splitlines() if x.startswith("MODULES ")]
    assert line, r.stdout + r.stderr
    return set(json.loads(line[-1].removeprefix("MODULES ")))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_importing_the_cli_loads_nothing_heavy() -> None:
    assert _heavy(_loaded()) == []


@pytest.mark.parametrize("argv", [("version",), ("status", "/nonexistent-vfile-mount"),
                                  ("quiesce", "/nonexistent-vfile-mount", "--max", "5s"),
                                  ("resume", "/nonexistent-vfile-mount")])
def test_hook_commands_load_nothing_heavy(argv: tuple[str, ...]) -> None:
    """Running them (up to the failed connect) loads no heavy part either, nor pydantic:
    typer 0.29 imports it to coerce any parameter (pyproject.toml pins typer below it)."""
    loaded = _loaded(*argv)
    assert _heavy(loaded) == []
    assert "pydantic" not in loaded, "typer coerces parameters through pydantic: see pyproject"


def test_the_control_client_is_trio_free() -> None:
    r = subprocess.run([sys.executable, "-c", "import sys, vfile.control; "
                        "print('trio' in sys.modules)"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.stdout.strip() == "False", r.stdout + r.stderr
