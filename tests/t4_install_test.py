"""The installed artefact, as a user gets it: a wheel, a fresh venv, outside the checkout.

Builds the wheel from this checkout, checks it holds exactly one top-level
import name and builds without deprecation warnings, installs it into a new
virtual environment in a temporary directory (with the checkout nowhere on
sys.path), and drives the *installed* `vfile` command: version, the built-in
appliance as a separate process, `vfile scan` against it, and a scanning mount
(embedded appliance) that serves a clean file and denies EICAR, then unmounts.
A missing package, data file or entry point fails here, not on a user's machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mounting import force_unmount, is_mounted
from servers import free_port

from vfile.scanner.signatures import EICAR

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin/` of a fresh venv with vfile installed from a freshly built wheel."""
    tmp = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # -v so setuptools' warnings reach the output we check.
    # From a copy of the checkout: an in-tree build would reuse (and package) whatever a
    # stale build/ directory still holds.
    tree = tmp / "tree"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
        "reports"))
    built = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp / "dist"),
                  str(tree)], cwd=tmp, env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    noise = [ln for ln in (built.stdout + built.stderr).splitlines()
             if "Deprecat" in ln or "SetuptoolsWarning" in ln]
    assert noise == [], "the build warns:\n" + "\n".join(noise)
    (wheel,) = (tmp / "dist").glob("vfile-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("vfile-")} == {"vfile"}
    assert "vfile/scanner/pool.py" in names and "vfile/journal/store.py" in names
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp, env=env)
    assert made.returncode == 0, made.stderr
    got = _run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], cwd=tmp, env=env)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    return venv / "bin"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_installed_command_runs_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    env = _env()
    r = _run([str(installed / "vfile"), "version"], cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    where = _run([str(installed / "python"), "-c",
                  "import vfile, vfile.scanner, vfile.journal; print(vfile.__file__)"],
                 cwd=tmp_path, env=env, timeout=60)
    assert where.returncode == 0 and str(installed.parent) in where.stdout, where.stdout
    for name in ("scanner", "journal"):  # no second top-level import name
        gone = _run([str(installed / "python"), "-c", f"import {name}"], cwd=tmp_path, env=env,
                    timeout=60)
        assert gone.returncode != 0


def test_installed_appliance_scan_and_mount(installed: Path, tmp_path: Path) -> None:
    env = _env()
    vfile = str(installed / "vfile")
    clean, bad = tmp_path / "clean.txt", tmp_path / "eicar.com"
    clean.write_text("nothing to see\n")
    bad.write_bytes(EICAR)
    port = free_port()
    serve = subprocess.Popen([vfile, "appliance", "serve", "--listen", f"tcp://127.0.0.1:{port}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert serve.stdout is not None
        assert b"listening on" in serve.stdout.readline()
        r = _run([vfile, "scan", str(clean), str(bad), "-a", f"clamd://127.0.0.1:{port}"],
                 cwd=tmp_path, env=env, timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"{clean}: OK" in r.stdout and f"{bad}: " in r.stdout and "FOUND" in r.stdout
    finally:
        serve.terminate()
        serve.wait(timeout=30)

    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    for d in (src, mnt):
        d.mkdir()
    (src / "hello.txt").write_text("hello\n")
    (src / "eicar.com").write_bytes(EICAR)
    m = _run([vfile, "mount", str(src), str(mnt), "--state-dir", str(state),
              "--log-file", str(tmp_path / "server.log")], cwd=tmp_path, env=env, timeout=120)
    try:
        assert m.returncode == 0, m.stdout + m.stderr
        assert is_mounted(mnt)
        assert (mnt / "hello.txt").read_text() == "hello\n"
        with pytest.raises(PermissionError):
            (mnt / "eicar.com").read_bytes()
        u = _run([vfile, "unmount", str(mnt)], cwd=tmp_path, env=env, timeout=60)
        assert u.returncode == 0, u.stdout + u.stderr
        assert not is_mounted(mnt)
    finally:
        force_unmount(mnt)
