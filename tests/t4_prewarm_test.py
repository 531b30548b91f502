"""`vfile prewarm` through a real mount and the built-in appliance in a subprocess.

Prewarm opens each file once through the mount: the files without a current
verdict are scanned and their verdicts stored, so later opens are cache hits;
an interrupted run resumes from its checkpoint; it waits out a window.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from filtering import filtering
from mounting import vfile_cmd
from outage import running_appliance

from vfile import control
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

FILES = 30


def run_prewarm(mnt: Path, ckpt: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    res = subprocess.run(vfile_cmd("prewarm", str(mnt), "--rate", "1000", "--checkpoint",
                                   str(ckpt), "--json", *args),
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def make_tree(src: Path) -> list[str]:
    rels = [f"d{i % 3}/f{i:02}.txt" for i in range(FILES - 1)] + ["z/eicar.com"]
    for i, rel in enumerate(rels):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(EICAR if rel.endswith("eicar.com") else b"file %d\n" % i)
    return sorted(rels, key=lambda p: p.split("/"))


def test_prewarm_scans_what_has_no_verdict_once_then_opens_are_hits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    ckpt = tmp_path / "prewarm.json"
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        first = run_prewarm(f.mnt, ckpt)
        assert first["total"] == FILES
        assert (first["opened"], first["denied"], first["failed"]) == (FILES - 1, 1, 0), first
        assert f.gate()["scans"] == FILES
        assert not ckpt.exists()  # a complete run starts from the top next time
        # Everything has a current verdict now: a second run scans nothing.
        again = run_prewarm(f.mnt, ckpt)
        assert again["opened"] == FILES - 1
        assert f.gate()["scans"] == FILES
        hits = f.gate()["cache_hits"]
        assert (f.mnt / "d0" / "f00.txt").read_bytes() == b"file 0\n"
        assert f.gate()["scans"] == FILES and f.gate()["cache_hits"] == hits + 1


def test_prewarm_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rels = make_tree(src)
    ckpt = tmp_path / "prewarm.json"
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        # As an interrupted run leaves it: everything up to the 10th file done.
        ckpt.write_text(json.dumps({"mountpoint": str(f.mnt), "done_through": rels[9]}))
        out = run_prewarm(f.mnt, ckpt)
        assert out["skipped"] == 10
        assert out["opened"] + out["denied"] == FILES - 10
        assert f.gate()["scans"] == FILES - 10
        # A checkpoint of another mount is not ours: a full run.
        ckpt.write_text(json.dumps({"mountpoint": "/elsewhere", "done_through": rels[9]}))
        assert run_prewarm(f.mnt, ckpt)["skipped"] == 0


def test_prewarm_waits_out_a_window(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    ckpt = tmp_path / "prewarm.json"
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        control.call(f.mnt, "quiesce", {"max": 3.0}, timeout=10)
        t0 = time.monotonic()
        out = run_prewarm(f.mnt, ckpt)
        waited = time.monotonic() - t0
        assert out["opened"] == FILES - 1
        assert f.gate()["deferrals"] == 0  # nothing was opened unscanned during the window
        assert f.gate()["scans"] == FILES
        assert waited > 1.0  # it did wait (the window ends within its 3 s max)
