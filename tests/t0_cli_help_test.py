"""Every command's --help shows an example, and every exit status the CLI
chooses is one of vfile.errors.Exit (the README's table)."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import typer.main
from typer.testing import CliRunner

import vfile.cli
from vfile.cli._app import app

CLI_DIR = Path(vfile.cli.__file__).parent


def commands() -> list[tuple[list[str], click.Command]]:
    out: list[tuple[list[str], click.Command]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append((path, cmd))

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_help_has_an_example() -> None:
    found = commands()
    assert len(found) > 15
    runner = CliRunner()
    missing = []
    for path, _ in found:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        if "Example" not in res.output:
            missing.append(" ".join(path))
    assert not missing, f"commands whose --help has no example: {missing}"


def test_cli_exits_only_through_exit_codes() -> None:
    # typer.Exit / SystemExit with a bare number would bypass the documented table.
    for source in sorted(CLI_DIR.glob("*.py")):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                name = node.func.attr if isinstance(node.func, ast.Attribute) \
                    else node.func.id
                if name in ("Exit", "exit", "SystemExit") and node.args:
                    arg = node.args[0]
                    assert not isinstance(arg, ast.Constant) or arg.value == 0, \
                        f"{source.name}:{node.lineno}: exit with a literal {arg.value!r}"
