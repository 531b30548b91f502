"""Builds through a scanning mount, against the same in a native directory (x23).

`make -j2` of a small C project (two compilers writing objects at once, the linker
reading them back, `make clean` unlinking them, a rebuild) and a virtual environment
made on the mount with a package installed into it by pip (ensurepip's own wheel,
then a local wheel: temporary directories, renames, byte-compiled files, symlinks,
console scripts). Each must end as it does natively; the module's mount must leave
every file with a journal entry or a clean verdict (`clients.scanning_mount`)."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import Scanning, run, scanning_mount

pytestmark = pytest.mark.mount

N = 40


@pytest.fixture(scope="module")
def scanning() -> Iterator[Scanning]:
    with scanning_mount() as s:
        yield s


def _project(root: Path) -> Path:
    proj = root / "proj"
    proj.mkdir()
    (proj / "h.h").write_text("#pragma once\nint twice(int);\n")
    for i in range(N):
        (proj / f"f{i}.c").write_text(
            f'#include "h.h"\nint f{i}(int x) {{ int s = 0; for (int j = 0; j < x; j++) '
            f"s += twice(j * {i}); return s; }}\n")
    (proj / "twice.c").write_text('#include "h.h"\nint twice(int x) { return 2 * x; }\n')
    (proj / "main.c").write_text(
        "#include <stdio.h>\n" + "".join(f"int f{i}(int);\n" for i in range(N))
        + "int main(void) { long t = 0;" + "".join(f" t += f{i}(10);" for i in range(N))
        + ' printf("%ld\\n", t); return 0; }\n')
    (proj / "Makefile").write_text(
        "OBJS = $(patsubst %.c,%.o,$(sort $(wildcard *.c)))\n"
        "prog: $(OBJS)\n\t$(CC) -o $@ $^\n"
        "%.o: %.c h.h\n\t$(CC) -O2 -c -o $@ $<\n"
        "clean:\n\trm -f *.o prog\n")
    return proj


def _objects(proj: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(proj.glob("*.o"))}


def test_make_j2(scanning: Scanning) -> None:
    seen = []
    for place in scanning.pair().both():
        proj = _project(place)
        run(["make", "-j2", "-s"], cwd=proj)
        run(["make", "-s", "clean"], cwd=proj)
        run(["make", "-j2", "-s"], cwd=proj)
        (proj / "twice.c").write_text('#include "h.h"\nint twice(int x) { return x + x; }\n')
        run(["make", "-j2", "-s"], cwd=proj)  # only twice.o and prog again
        seen.append((run([str(proj / "prog")]).stdout, _objects(proj)))
    assert seen[0] == seen[1]
    assert seen[0][0].strip() and len(seen[0][1]) == N + 2


def _wheel(where: Path) -> Path:
    """A minimal pure-Python wheel: a module and a console script."""
    name = "x23demo"
    files = {
        f"{name}.py": b"def main():\n    print('x23demo', 6 * 7)\n",
        f"{name}-1.0.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{name}-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: x23\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{name}-1.0.dist-info/entry_points.txt":
            f"[console_scripts]\n{name} = {name}:main\n".encode(),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(data)}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    files[f"{name}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = where / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


def test_venv_and_pip_install(scanning: Scanning, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    seen = []
    for place in scanning.pair().both():
        venv = place / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check",
               "--no-cache-dir"]
        run([*pip, "install", "-q", "--no-index", str(wheel)])
        out = run([str(venv / "bin" / "x23demo")]).stdout
        run([*pip, "check"])
        listed = sorted(p.relative_to(venv).as_posix() for p in venv.rglob("*")
                        if "__pycache__" not in p.parts)
        seen.append((out, listed))
    assert seen[0][0] == "x23demo 42\n"
    assert seen[0] == seen[1]
