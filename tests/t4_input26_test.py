"""Bad input and trust of outside input, round 11 (s26).

A `--config` or a `--signatures` directory that another local user can write (the
file, or a directory on the way to it) let that user turn scanning off or drop a
signature: vfile read them whoever could write them. Now they are read like root's
logs are written (vfile/scanner/trusted.py): walked from `/`, every directory root's
or ours and writable by no other user (sticky ones excepted: others cannot replace
our names there), the file O_NOFOLLOW, root's or ours, writable by no other user.
A refusal is one clear line and exit 3, nothing mounted; the built-in appliance's
reload on SIGHUP keeps its old signatures. Also: a missing `--signatures` directory
was "the mount server failed; see its log" (exit 10), now exit 3 with the reason."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from lifecycle import READER_UID
from mounting import (
    force_unmount,
    is_mounted,
    mounted,
    server_pids,
    vfile_cmd,
    wait_for,
    wait_gone,
)
from servers import Samples, free_port

from vfile import control
from vfile.errors import Exit

pytestmark = pytest.mark.mount

# a clean/plain .hdb line (md5 of b"x", size 1): any valid signature
NEW_SIG = "9dd4e461268c8034f5c8564e155c67a6:1:Vfile.Test.New\n"


def _down(mountpoint: Path) -> None:
    if is_mounted(mountpoint):
        subprocess.run(vfile_cmd("unmount", str(mountpoint)), check=False, timeout=60,
                       capture_output=True)
    force_unmount(mountpoint)
    assert wait_gone(mountpoint), "the server did not exit"
    for pid in server_pids(mountpoint):
        os.kill(pid, 9)


def _mount(source: Path, mountpoint: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    state = source.parent / "state"  # (not a default one under /var/lib/vfile)
    try:
        return subprocess.run(vfile_cmd("mount", "--state-dir", str(state), *extra,
                                        str(source), str(mountpoint)),
                              capture_output=True, text=True, check=False, timeout=60)
    finally:
        _down(mountpoint)


def _config(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[[profile]]\nname = "default"\nfail_mode = "safe"\n')
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("case", ["file-0666", "file-0664-group", "file-other-owner",
                                  "dir-0777", "parent-0777", "symlink-into-0777"])
def test_a_config_others_may_write_is_refused(source: Path, mountpoint: Path,
                                              tmp_path: Path, case: str) -> None:
    conf = _config(tmp_path / "etc" / "vfile" / "guest.toml")
    given = conf
    if case == "file-0666":
        conf.chmod(0o666)
    elif case == "file-0664-group":
        os.chown(conf, 0, READER_UID)
        conf.chmod(0o664)
    elif case == "file-other-owner":
        os.chown(conf, READER_UID, READER_UID)
    elif case == "dir-0777":
        conf.parent.chmod(0o777)
    elif case == "parent-0777":
        conf.parent.parent.chmod(0o777)  # the user renames vfile/ away, puts their own
    else:
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        (shared / "vfile").mkdir()
        real = _config(shared / "vfile" / "guest.toml")
        (tmp_path / "link").symlink_to(shared / "vfile")
        given = tmp_path / "link" / real.name
    res = _mount(source, mountpoint, "--config", str(given))
    assert res.returncode == int(Exit.CONFIG), (res.returncode, res.stderr)
    assert "writable by other users" in res.stderr or "belongs to uid" in res.stderr, \
        res.stderr
    assert str(given) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def test_a_trusted_config_through_a_symlink_and_a_sticky_dir_mounts(
        source: Path, mountpoint: Path, tmp_path: Path) -> None:
    """What stays allowed: root's config in a sticky directory (/tmp is one: every
    test's tmp_path is below it), reached through a symlink in a trusted directory."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    conf = _config(sticky / "mine" / "guest.toml")
    (tmp_path / "conf.toml").symlink_to(conf)
    res = _mount(source, mountpoint, "--config", str(tmp_path / "conf.toml"))
    assert res.returncode == 0, res.stderr


def _sigdir(root: Path, samples: Samples) -> Path:
    sigs = root / "sigs"
    sigs.mkdir()
    (sigs / "vfile-test.hdb").write_text((samples.sigdir / "vfile-test.hdb").read_text())
    return sigs


@pytest.mark.parametrize("case", ["dir-0777", "file-0666", "file-other-owner", "missing",
                                  "not-utf8"])
def test_mount_signatures_others_may_write_are_refused(
        source: Path, mountpoint: Path, tmp_path: Path, samples: Samples, case: str) -> None:
    sigs = _sigdir(tmp_path, samples)
    if case == "dir-0777":
        sigs.chmod(0o777)  # a user could add, replace or remove a .hdb
    elif case == "file-0666":
        (sigs / "vfile-test.hdb").chmod(0o666)
    elif case == "file-other-owner":
        os.chown(sigs / "vfile-test.hdb", READER_UID, READER_UID)
    elif case == "missing":
        sigs = tmp_path / "no-such-dir"
    else:  # was a UnicodeDecodeError: exit 10 here, and the end of `appliance serve`
        (sigs / "bad.hdb").write_bytes(b"\xff\xfe:1:x\n")  # on its reload (SIGHUP)
    res = _mount(source, mountpoint, "--signatures", str(sigs))
    assert res.returncode == int(Exit.CONFIG), (res.returncode, res.stderr)
    assert "signatures" in res.stderr and str(sigs) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def _serve(sigs: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(vfile_cmd("appliance", "serve", "--listen",
                                      f"tcp://127.0.0.1:{port}", "--signatures", str(sigs)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)


def _version(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"zVERSION\0")
        out = b""
        while not out.endswith(b"\0"):
            chunk = s.recv(4096)
            assert chunk, out
            out += chunk
    return out.decode()


def _wait_listening(app: subprocess.Popen[str]) -> None:
    assert app.stdout is not None
    line = app.stdout.readline()
    assert "listening on" in line, (line, app.stdout.read() if app.poll() is not None else "")


def test_appliance_serve_refuses_signatures_others_may_write(tmp_path: Path,
                                                             samples: Samples) -> None:
    sigs = _sigdir(tmp_path, samples)
    sigs.chmod(0o777)
    app = _serve(sigs, free_port())
    try:
        out, _ = app.communicate(timeout=60)
    finally:
        app.kill()
        app.wait(10)
    assert app.returncode == int(Exit.CONFIG), out
    assert "writable by other users" in out and str(sigs) in out, out


def test_appliance_reload_refuses_signatures_made_writable(tmp_path: Path,
                                                           samples: Samples) -> None:
    """SIGHUP reloads the directory; once another user could have written it, the
    reload is refused and the old signatures stay (their version too)."""
    sigs = _sigdir(tmp_path, samples)
    port = free_port()
    app = _serve(sigs, port)
    try:
        _wait_listening(app)
        before = _version(port)
        sigs.chmod(0o777)
        (sigs / "planted.hdb").write_text(NEW_SIG)
        app.send_signal(signal.SIGHUP)
        time.sleep(1.0)  # (a reload that happened shows in the version; none must)
        assert app.poll() is None
        assert _version(port) == before
        sigs.chmod(0o755)  # trusted again: the next reload takes it
        app.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _version(port) == before:
            assert time.monotonic() < deadline, "the trusted reload never happened"
            time.sleep(0.1)
    finally:
        app.kill()
        out = app.communicate(timeout=10)[0]
    assert "signature reload failed" in out and "writable by other users" in out, out


@pytest.mark.parametrize("mode", [0o666, 0o644])
def test_a_cache_key_others_may_write_or_read_is_refused(tmp_path: Path, mode: int) -> None:
    """The caching appliance's --key-file authenticates the fleet's stored verdicts:
    whoever can write it (or read it) can forge a "clean" in Redis."""
    key = tmp_path / "cache.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    key.chmod(mode)
    app = subprocess.Popen(vfile_cmd("appliance", "cache", "--listen",
                                     f"tcp://127.0.0.1:{free_port()}", "--upstream",
                                     f"clamd://127.0.0.1:{free_port()}", "--redis",
                                     f"redis://127.0.0.1:{free_port()}/0", "--key-file",
                                     str(key)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True)
    try:
        out, _ = app.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        app.kill()
        out = app.communicate(timeout=10)[0]
    assert app.returncode == int(Exit.USAGE), out
    assert str(key) in out and ("writable by other users" in out
                                or "readable by every user" in out), out


# --- another user floods the mount's sockets ------------------------------------------

#: a second uid's client (plain python3: nothing of this checkout needed): hold up to N
#: connections to the metrics port for S seconds, or make N connections to the control
#: socket one after another, reading each reply
_HOLD = """
import socket, sys, time
port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
held, end = [], time.monotonic() + secs
while time.monotonic() < end and len(held) < n:
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        held.append(s)
    except OSError:
        s.close()
        time.sleep(0.01)
print(len(held), flush=True)
time.sleep(max(0.0, end - time.monotonic()))
"""
_KNOCK = """
import socket, sys
path, n, refused = sys.argv[1], int(sys.argv[2]), 0
for _ in range(n):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        refused += b"refused" in reply
print(refused, flush=True)
"""


def _as_reader(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["setpriv", f"--reuid={READER_UID}", f"--regid={READER_UID}",
                             "--clear-groups", "/usr/bin/python3", "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_flood_of_metrics_connections_holds_no_more_than_a_few(
        source: Path, mountpoint: Path) -> None:
    """Any local user may connect to `--metrics` (TCP on loopback). Each connection was
    accepted and held up to its 5 s request deadline: 1500 silent ones cost the server
    1500 descriptors (bench/metrics_flood.py: 11,350 under two such clients, RSS 41 ->
    114 MB, 200 reads through the mount 0.18 -> 10.4 s); at its descriptor limit the
    mount's own opens fail.
    Now at most `MAX_CLIENTS` are served at once; the rest wait in the kernel's
    listen queue, costing the server nothing."""
    for i in range(20):
        (source / f"f{i}").write_bytes(b"data %d\n" % i)
    port = free_port()
    with mounted(source, mountpoint, "--metrics", f"127.0.0.1:{port}", "--state-dir",
                 str(source.parent / "state")):
        pid = server_pids(mountpoint)[0]
        base = _fds(pid)
        attacker = _as_reader(_HOLD, str(port), "1500", "8")
        try:
            assert attacker.stdout is not None
            held = int(attacker.stdout.readline() or 0)
            assert held >= 500, f"the premise: the other user holds connections ({held})"
            during = 0
            for _ in range(30):  # the most the server holds while they are held
                during = max(during, _fds(pid))
                for i in range(20):  # and the mount serves meanwhile
                    assert (mountpoint / f"f{i}").read_bytes() == b"data %d\n" % i
                time.sleep(0.1)
        finally:
            attacker.kill()
            attacker.wait(10)
        assert during - base < 100, f"{held} connections held {during - base} descriptors"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            assert b"vfile_" in r.read()


def test_a_flood_of_refused_control_clients_is_logged_a_few_times(
        source: Path, mountpoint: Path) -> None:
    """Every refusal of another uid on the control socket logged a warning: a user
    connecting in a loop wrote a line to root's log per connection (300 here). Now the
    refusal is still answered every time, logged at most once a minute per uid."""
    with mounted(source, mountpoint, "--state-dir", str(source.parent / "state")) as server:
        sock = control.runtime_dir() / control.socket_name(mountpoint)
        attacker = _as_reader(_KNOCK, str(sock), "300")
        out, err = attacker.communicate(timeout=120)
        assert out.strip() == "300", (out, err)
        res = subprocess.run(vfile_cmd("status", str(mountpoint)), capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        lines = [ln for ln in server.log().splitlines() if "refused uid" in ln]
    assert 1 <= len(lines) <= 3, lines


# --- names that are not text: log injection, the audit log ------------------------------

FORGED = "WARNING vfile.fake: forged line"
EVIL = "evil\n" + FORGED  # a newline in a name: a forged line in a log read line by line
RAW = b"\xff\xfe.com"  # not UTF-8: a surrogate in Python's str of it


def test_names_that_are_not_text_forge_no_log_line_and_stop_no_audit(
        source: Path, mountpoint: Path, tmp_path: Path, samples: Samples) -> None:
    """A user's file named b'\\xff\\xfe.com' stopped the audit log for the rest of the
    mount ("cannot write ... surrogates not allowed; audit lines stop here"): nothing
    anyone opened afterwards was audited. A name with a newline put a forged line in
    the server's plain log (the quarantine destination, which holds the name). Now the
    audit line escapes what is not UTF-8 (valid JSON, the bytes recoverable with
    os.fsencode) and the plain log escapes control characters in messages."""
    (source / EVIL).write_bytes(samples.eicar.read_bytes())
    (source / os.fsdecode(RAW)).write_bytes(b"plain\n")
    (source / "after.txt").write_bytes(b"opened after the others\n")
    logs = tmp_path / "logs"
    with mounted(source, mountpoint, "--audit-log", str(logs / "audit.jsonl"),
                 "--state-dir", str(tmp_path / "state")) as server:
        assert (mountpoint / os.fsdecode(RAW)).read_bytes() == b"plain\n"
        with pytest.raises(PermissionError):
            (mountpoint / EVIL).read_bytes()
        assert (mountpoint / "after.txt").read_bytes() == b"opened after the others\n"
        # the server's stderr, plain format; the quarantine runs after the deny
        wait_for("the quarantine's log line", lambda: "quarantined" in server.log(), 60)
        text = server.log()
    audited = [json.loads(line) for line in
               (logs / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    paths = {os.fsencode(a["path"]) for a in audited}
    assert {RAW, b"after.txt", os.fsencode(EVIL)} <= paths, audited
    assert "quarantined" in text, text
    assert not [ln for ln in text.splitlines() if ln.startswith(FORGED)], text


def test_journal_list_prints_one_line_per_entry(source: Path, mountpoint: Path,
                                                tmp_path: Path) -> None:
    """`vfile journal list` printed a journaled name as it is: a newline in it made a
    second, forged row. Names that are not printable are now shown quoted, escaped."""
    for name in (EVIL, os.fsdecode(RAW), "plain.txt"):
        (source / name).write_bytes(b"data\n")
    state = tmp_path / "state"
    with mounted(source, mountpoint, "--appliance", f"clamd://127.0.0.1:{free_port()}",
                 "--fail-mode", "safe", "--state-dir", str(state)):
        for name in (EVIL, os.fsdecode(RAW), "plain.txt"):
            assert (mountpoint / name).read_bytes() == b"data\n"  # allowed, journaled
    res = subprocess.run(vfile_cmd("journal", "list", "--state-dir", str(state)),
                         capture_output=True, check=False, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = res.stdout.decode("utf-8", "replace").splitlines()
    assert len(rows) == 3, rows
    assert not [r for r in rows if r.startswith(FORGED)], rows
    assert b"3 deferred" in res.stderr


@pytest.mark.parametrize(("body", "key"), [
    ('[mount]\nstate_dir = "/tmp/a\\u0000b"\n', "mount.state_dir"),
    ('[mount]\nquarantine_dir = "/tmp/q\\u0000"\n', "mount.quarantine_dir"),
    ('[[profile]]\nname = "p"\npaths = ["a\\u0000/**"]\n', "profile[0].paths"),
], ids=["state_dir", "quarantine_dir", "paths"])
def test_a_nul_in_a_config_string_is_a_config_error(source: Path, mountpoint: Path,
                                                    tmp_path: Path, body: str,
                                                    key: str) -> None:
    """TOML allows \\u0000 in strings; no path can hold it. It was "the mount server
    failed; see its log" (exit 10, a ValueError: embedded null byte)."""
    conf = tmp_path / "c.toml"
    conf.write_text(body)
    res = _mount(source, mountpoint, "--config", str(conf))
    assert res.returncode == int(Exit.CONFIG), (res.returncode, res.stderr)
    assert key in res.stderr and "NUL" in res.stderr, res.stderr


# --- a journal another user could have written --------------------------------------------

def _their_journal(state: Path, victim: Path) -> None:
    """A journal as a user's own mount leaves it (theirs: they write its records), with
    one record of their making: 'quarantined' at root's victim."""
    import trio

    from vfile.journal import Journal
    from vfile.journal.records import QuarantineRecord

    async def add() -> None:
        with Journal.open(state) as j:
            await j.add_quarantine(QuarantineRecord(
                id="feedface", original_path="x", quarantine_path=str(victim),
                signature="Planted", time=time.time(), identity=None, profile="default"))

    trio.run(add)
    for p in [state, *state.rglob("*")]:
        os.chown(p, READER_UID, READER_UID, follow_symlinks=False)


def test_root_does_not_act_on_a_journal_another_user_wrote(tmp_path: Path) -> None:
    """`vfile quarantine delete ID --state-dir DIR` unlinks the record's quarantine path.
    A user's state directory (their own mount's: they own it, and can write any record
    into it) named root's file there, and root's `delete` (asked to clean up after the
    user) removed it. Now a journal of a user neither root nor us is refused, exit 7,
    as a mount refuses that state directory."""
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    state = tmp_path / "theirs"
    _their_journal(state, victim)
    for argv in (["quarantine", "delete", "feedface"], ["quarantine", "list"],
                 ["journal", "list"]):
        res = subprocess.run(vfile_cmd(*argv, "--state-dir", str(state)), capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == int(Exit.JOURNAL), (argv, res.returncode, res.stderr)
        assert f"uid {READER_UID}" in res.stderr, res.stderr
    assert victim.read_text() == "root's file\n"


def test_fstab_option_values_may_be_quoted(tmp_path: Path) -> None:
    """mount(8) (libmount) keeps a double-quoted option value whole, commas and all,
    and hands it on quoted: `state_dir="/srv/a,b/state"` was split at the comma ("unknown
    mount option 'b/state\"'"), and a quoted value without one kept its quotes (a
    state directory named with them). Now the helper reads a quoted value as mount does."""
    import shutil

    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    state = tmp_path / "a,b" / "state"
    helper = shutil.which("mount.fuse.vfile", path=str(Path(vfile_cmd()[0]).parent))
    assert helper is not None
    try:
        res = subprocess.run([helper, str(src), str(mnt), "-o",
                              f'defaults,state_dir="{state}",fail_mode=safe'],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert is_mounted(mnt)
    finally:
        _down(mnt)
    assert (state / "data.mdb").exists()
