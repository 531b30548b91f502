"""Test modules never import each other: a helper two test modules share lives in a
plain module under tests/ (statedisks.py, powercut.py, mounting.py, ...). Importing a
test module runs its module-level code and registers its tests and fixtures a second
time under another name, and ties one test file's refactoring to another's."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_test_module(name: str) -> bool:
    top = name.partition(".")[0]
    return top.endswith("_test") or top.startswith("test_")


def _imports_of_tests(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and _is_test_module(node.module):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_test_module(a.name)]
    return found


def test_no_test_module_imports_another() -> None:
    offenders = {p.name: mods for p in sorted(TESTS.glob("*.py"))
                 if (mods := _imports_of_tests(p))}
    assert offenders == {}


def test_the_check_sees_such_an_import(tmp_path: Path) -> None:
    probe = tmp_path / "t9_probe_test.py"
    probe.write_text("from t5_powerloss_test import cutfs\nimport t4_other_test\n")
    assert _imports_of_tests(probe) == ["t5_powerloss_test", "t4_other_test"]
