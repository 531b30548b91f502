"""The control plane without a mount: wire format, refusals, bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from vfile import control, control_server


def test_parse_request_accepts_a_command() -> None:
    assert control.parse_request(b'{"cmd": "status"}') == ("status", {})
    assert control.parse_request(b'{"cmd": "quiesce", "args": {"max": 5}}') == (
        "quiesce", {"max": 5})


@pytest.mark.parametrize("line", [b"", b"not json", b"[]", b'{"cmd": 3}', b'{"cmd": ""}',
                                  b'{"cmd": "x", "args": []}', b"\xff\xfe"])
def test_parse_request_rejects_malformed(line: bytes) -> None:
    with pytest.raises(ValueError, match="malformed request"):
        control.parse_request(line)


def test_socket_name_is_short_and_stable(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 200)
    name = control.socket_name(deep)
    assert name == control.socket_name(str(deep) + "/")
    assert len(name) < 60
    assert control.socket_name(tmp_path / "a") != control.socket_name(tmp_path / "b")


async def _handler(cmd: str, args: dict[str, Any], uid: int) -> Any:
    if cmd == "echo":
        return {"args": args, "uid": uid}
    if cmd == "boom":
        raise RuntimeError("kaput")
    raise control.ControlError(f"unknown command {cmd!r}")


async def _with_server(tmp_path: Path, owner: int, fn: Any) -> Any:
    path = tmp_path / "ctl.sock"
    server = control_server.ControlServer(path, _handler, owner_uid=owner)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            return await fn(path)
        finally:
            nursery.cancel_scope.cancel()


async def test_round_trip_and_errors(tmp_path: Path) -> None:
    async def body(path: Path) -> None:
        result = await trio.to_thread.run_sync(control.call_socket, path, "echo", {"a": 1})
        assert result == {"args": {"a": 1}, "uid": os.getuid()}
        with pytest.raises(control.ControlError, match="unknown command 'nope'"):
            await trio.to_thread.run_sync(control.call_socket, path, "nope")
        with pytest.raises(control.ControlError, match="boom failed: kaput"):
            await trio.to_thread.run_sync(control.call_socket, path, "boom")

    await _with_server(tmp_path, os.getuid(), body)
    assert not (tmp_path / "ctl.sock").exists(), "socket removed on shutdown"


async def test_malformed_and_silent_clients_get_errors(tmp_path: Path) -> None:
    async def body(path: Path) -> None:
        def raw(data: bytes) -> dict[str, Any]:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(20)
                s.connect(str(path))
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                return json.loads(s.makefile("rb").readline())  # type: ignore[no-any-return]

        reply = await trio.to_thread.run_sync(raw, b"garbage\n")
        assert reply["ok"] is False and "malformed" in reply["error"]
        reply = await trio.to_thread.run_sync(raw, b"x" * (control.MAX_REQUEST + 10))
        assert reply["ok"] is False and "longer than" in reply["error"]

    await _with_server(tmp_path, os.getuid(), body)


async def test_other_uid_is_refused() -> None:
    """A real second uid (nobody) connects and gets a refusal naming its uid."""
    assert os.getuid() == 0, "this test needs root to switch to a second uid"
    # pytest's tmp_path lives in a 0700 tree nobody cannot enter.
    shared = Path(tempfile.mkdtemp(prefix="vfile-ctl-"))
    os.chmod(shared, 0o755)
    script = (
        # Import before dropping privileges: the interpreter lives under /root.
        "import os, sys\n"
        "from vfile import control\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "try:\n"
        "    control.call_socket(sys.argv[1], 'echo', {})\n"
        "except control.Refused as err:\n"
        "    print('REFUSED', err); sys.exit(3)\n"
        "print('SERVED'); sys.exit(0)\n"
    )

    async def body(path: Path) -> None:
        proc = await trio.run_process([sys.executable, "-c", script, str(path)],
                                      capture_stdout=True, capture_stderr=True, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 3, out + proc.stderr.decode()
        assert "uid 65534 is neither root nor the mount's owner" in out

    try:
        await _with_server(shared, 0, body)
    finally:
        shutil.rmtree(shared)


async def test_stale_socket_is_replaced_and_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound but nobody listens: what a crashed server leaves

    async def body(p: Path) -> None:
        second = control_server.ControlServer(p, _handler, owner_uid=0)
        with pytest.raises(control.ControlError, match="another vfile"):
            await second.serve()
        assert await trio.to_thread.run_sync(control.call_socket, p, "echo") is not None

    await _with_server(tmp_path, os.getuid(), body)


def test_call_without_a_mount_says_so(tmp_path: Path) -> None:
    with pytest.raises(control.ControlError, match="no live vfile mount"):
        control.call(tmp_path / "not-mounted", "status", timeout=2)


_STARVED_SERVER = """
import os, resource, sys, trio
from pathlib import Path
from vfile import control_server

async def handler(cmd, args, uid):
    return {"pong": cmd}

async def main():
    server = control_server.ControlServer(Path(sys.argv[1]), handler, owner_uid=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        held = []
        try:  # take every descriptor left, as a flood of opens through a mount would
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as err:
            print("starved", err.errno, flush=True)
        await trio.sleep_forever()

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
trio.run(main)
"""


def test_the_control_plane_answers_in_a_process_out_of_descriptors(tmp_path: Path) -> None:
    """Issue 20: with every descriptor of the server taken, accept() fails with
    EMFILE; the control socket still answers, again and again (its reserve)."""
    import errno
    import subprocess

    path = tmp_path / "ctl.sock"
    proc = subprocess.Popen([sys.executable, "-c", _STARVED_SERVER, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.split() == ["starved", str(errno.EMFILE)], (line, proc.stderr)
        for i in range(5):
            assert control.call_socket(path, f"ping{i}", timeout=20) == {"pong": f"ping{i}"}
    finally:
        proc.kill()
        proc.wait()
