"""The embedded default through a real mount: `vfile mount` with no --appliance.

The mount calls its built-in engine directly (scanner/embedded.py), no socket:
EICAR written through the mount is denied and quarantined after close, a clean
file reads, status shows the appliance as `embedded`, and a failing engine
(`VFILE_EMBEDDED_FAULT`, a malformed result or no answer) is an error verdict,
never clean: the profile's fail mode decides.
"""

from __future__ import annotations

import errno
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import pytest
from filtering import (
    DEADLINE,
    MARGIN,
    Filter,
    assert_quarantined,
    config_file,
    journal_list,
    timed_read,
)
from mounting import Server, mounted, wait_for

from vfile.control import runtime_dir, socket_name
from vfile.scanner.signatures import EICAR, EICAR_NAME

pytestmark = pytest.mark.mount


def _mount(tmp_path: Path, *args: str, fault: str = "") -> ContextManager[Server]:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    return mounted(src, mnt, "--state-dir", str(tmp_path / "state"),
                   "--config", str(config_file(tmp_path)), "--timeout", str(DEADLINE), *args,
                   env={"VFILE_EMBEDDED_FAULT": fault} if fault else None)


def test_embedded_scans_without_a_socket(tmp_path: Path) -> None:
    clean = b"nothing to see\n" * 100
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "clean.txt").write_bytes(clean)
    with _mount(tmp_path) as server:
        f = Filter(server, tmp_path / "state")
        apps = f.status()["appliances"]
        assert [a["url"] for a in apps] == ["embedded"], apps
        assert timed_read(f.mnt / "clean.txt", DEADLINE + MARGIN).data == clean
        with open(f.mnt / "dropped.com", "wb") as out:
            out.write(EICAR)
        assert_quarantined(f, "dropped.com", EICAR, EICAR_NAME)
        f.wait_idle()
        assert journal_list(f.state) == {}
        got = timed_read(f.mnt / "dropped.com", DEADLINE + MARGIN)
        assert got.errno in (errno.EACCES, errno.ENOENT), got  # a dentry the kernel kept
        (app,) = f.status()["appliances"]
        assert app["healthy"] and app["state"] == "closed" and app["errors"] == 0, app
        assert app["scans"] >= 2 and app["sig_version"].startswith("vfile-builtin 1"), app
        # Nothing listens for it: the engine is called, not connected to.
        name = socket_name(f.mnt).replace(".sock", ".appliance.sock")
        assert not (runtime_dir() / name).exists()


@pytest.mark.parametrize(("fault", "mode"), [("garbage", "closed"), ("garbage", "safe"),
                                             ("blackhole", "closed")])
def test_failing_engine_is_an_error_verdict(tmp_path: Path, fault: str, mode: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"a\n")
    with _mount(tmp_path, "--fail-mode", mode, fault=fault) as server:
        f = Filter(server, tmp_path / "state")
        got = timed_read(f.mnt / "a.txt", DEADLINE + MARGIN)
        gate = f.gate()
        assert gate["infections"] == 0
        if mode == "closed":
            assert got.errno == errno.EACCES, got
            assert gate["denials"] == 1
        else:
            assert got.data == b"a\n", got
            assert gate["exposures"] == 1
            assert set(journal_list(f.state)) == {"a.txt"}
        wait_for("the failure on the appliance", lambda: f.status()["appliances"][0]["errors"])
        (app,) = f.status()["appliances"]
        if fault == "garbage":
            assert "malformed result" in app["last_error"], app
        # never a clean verdict: no verdict was stored, the next open asks again
        assert timed_read(f.mnt / "a.txt", DEADLINE + MARGIN).errno == got.errno
