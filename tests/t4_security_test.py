"""Security through a real mount, with a real second uid (nobody, 65534).

- The control plane of a live mount refuses another uid.
- State and quarantine directories are 0700, the files in them 0600.
- Without `-o allow_other` another uid gets EACCES on the mountpoint; with it,
  it gets in.
- No escape from the source: a relative symlink in the source that would
  point outside it when resolved *by the daemon* resolves (by the kernel)
  relative to the mountpoint instead; a directory swapped for such a symlink
  behind vfile's back (a rename race) never yields the outside file; the
  drain and quarantine never follow a symlink planted over a journaled file.

Children that act as nobody import what they need before dropping to uid
65534 (the interpreter lives under /root, 0700), and the directories they
must reach are made 0755 (pytest's tmp_path is 0700).
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted
from outage import running_appliance, running_proxy, status, write_config
from servers import Samples

from vfile.scanner.signatures import EICAR

DROP = ("import os, sys, errno\n"
        "from vfile import control\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n")


def _as_nobody(body: str, *args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", DROP + body, *args], capture_output=True,
                          text=True, timeout=60, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def shared() -> Iterator[Path]:
    """A temp tree nobody can traverse (0755)."""
    assert os.getuid() == 0, "these tests need root to act as a second uid"
    path = Path(tempfile.mkdtemp(prefix="vfile-sec-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tree(root: Path) -> tuple[Path, Path, Path]:
    src, mnt, state = root / "src", root / "m" / "mnt", root / "state"
    for p in (src, mnt):
        p.mkdir(parents=True)
        os.chmod(p, 0o755)
    os.chmod(mnt.parent, 0o755)
    return src, mnt, state


STAT_MNT = ("try:\n"
            "    os.stat(sys.argv[1]); os.listdir(sys.argv[1]); print('IN')\n"
            "except PermissionError:\n"
            "    print('EACCES'); sys.exit(13)\n")


def test_second_uid_is_kept_out(shared: Path, samples: Samples) -> None:
    src, mnt, state = _tree(shared)
    (src / "f").write_bytes(b"data")
    os.chmod(src / "f", 0o644)
    cfg = write_config(shared / "vfile.toml")
    with running_appliance(samples.sigdir) as app:
        with mounted(src, mnt, "--appliance", app.url, "--config", str(cfg),
                     "--state-dir", str(state)):
            # allow_other is off by default: another uid cannot even stat the mountpoint
            code, out = _as_nobody(STAT_MNT, str(mnt))
            assert (code, out.strip()) == (13, "EACCES"), out
            # the control plane refuses another uid
            code, out = _as_nobody(
                "try:\n"
                "    control.call(sys.argv[1], 'status', timeout=10); print('SERVED')\n"
                "except control.ControlError as err:\n"
                "    print('REFUSED', type(err).__name__, err); sys.exit(3)\n", str(mnt))
            assert code == 3 and "REFUSED" in out and "SERVED" not in out, out
            assert status(mnt)["mount"]["owner_uid"] == 0  # the owner is served
            # state directory and journal files: 0700 / 0600
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
            assert (mnt / "f").read_bytes() == b"data"  # the gate learns the signature
            deadline = time.monotonic() + 10
            while not (state / "last-signature-version").exists():
                assert time.monotonic() < deadline, "signature version never persisted"
                time.sleep(0.05)
            for f in state.iterdir():
                if f.is_file():
                    assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        with mounted(src, mnt, "--appliance", app.url, "--config", str(cfg),
                     "--state-dir", str(state), "-o", "allow_other"):
            code, out = _as_nobody(STAT_MNT, str(mnt))
            assert (code, out.strip()) == (0, "IN"), out


def test_no_escape_from_the_source(shared: Path, samples: Samples) -> None:
    src, mnt, state = _tree(shared)
    outside = shared / "outside"  # ../outside from src; from mnt it would be m/outside
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside secret")
    (outside / "eicar.com").write_bytes(EICAR)
    (src / "d").mkdir()
    (src / "d" / "secret").write_bytes(b"inside")
    os.symlink("../outside/secret", src / "esc")
    os.symlink("../outside", src / "escdir")
    cfg = write_config(shared / "vfile.toml", extra_profile='infected_action = "quarantine"\n')
    qdir = state / "quarantine"
    with running_appliance(samples.sigdir) as app, running_proxy(app.url) as proxy, \
            mounted(src, mnt, "--appliance", proxy.url, "--config", str(cfg),
                    "--state-dir", str(state)):
        # symlinks are links: read as links, resolved by the kernel from the mountpoint
        assert os.readlink(mnt / "esc") == "../outside/secret"
        with pytest.raises(FileNotFoundError):
            (mnt / "esc").read_bytes()
        with pytest.raises(FileNotFoundError):
            (mnt / "escdir" / "secret").read_bytes()
        # `..` at the mount's root is the mountpoint's parent, not the source's
        assert os.path.samefile(mnt / "..", mnt.parent)
        # rename race: the daemon holds d; behind its back d becomes ../outside
        assert (mnt / "d" / "secret").read_bytes() == b"inside"
        os.rename(src / "d", src / "d_old")
        os.symlink("../outside", src / "d")
        for _ in range(3):
            try:
                got = (mnt / "d" / "secret").read_bytes()
            except FileNotFoundError:
                got = b""
            assert got in (b"inside", b""), "read the outside file through the daemon"
            time.sleep(0.6)  # past the kernel's entry timeout: a fresh lookup
        # quarantine never follows a symlink: journal x while the appliance is down,
        # then plant a symlink to an outside EICAR over it, then let the drain run
        proxy.set_fault("refuse")
        (mnt / "x").write_bytes(b"harmless")
        deadline = time.monotonic() + 10
        while "x" not in {e["path"] for e in _deferred(mnt)}:
            assert time.monotonic() < deadline, "x was never journaled"
            time.sleep(0.05)
        (src / "x").unlink()
        os.symlink(outside / "eicar.com", src / "x")
        proxy.set_fault("none")
        deadline = time.monotonic() + 20
        while _deferred(mnt):
            assert time.monotonic() < deadline, f"drain did not finish: {_deferred(mnt)}"
            time.sleep(0.1)
        assert os.path.islink(src / "x")
        assert (outside / "eicar.com").read_bytes() == EICAR
        assert stat.S_IMODE(qdir.stat().st_mode) == 0o700
        assert list(qdir.iterdir()) == []
        # The drain settled x without a scan (a symlink now), so the breaker may still be
        # cooling down from the refusals, and a safe-mode open would then go on unscanned
        # (journaled): scan fresh clean files until a scan has closed it again.
        deadline = time.monotonic() + 20
        n = 0
        while status(mnt)["appliances"][0]["state"] != "closed":
            assert time.monotonic() < deadline, status(mnt)["appliances"]
            n += 1
            (src / f"warm{n}").write_bytes(b"clean %d" % n)
            assert (mnt / f"warm{n}").read_bytes() == b"clean %d" % n
            time.sleep(0.1)
        # a real infection is quarantined into a 0700 directory, as a 0600 file
        (src / "bad.com").write_bytes(EICAR)
        with pytest.raises(PermissionError):
            (mnt / "bad.com").read_bytes()
        deadline = time.monotonic() + 10
        while not list(qdir.iterdir()):
            assert time.monotonic() < deadline, "nothing quarantined"
            time.sleep(0.05)
        for f in qdir.iterdir():
            assert stat.S_IMODE(f.lstat().st_mode) == 0o600, f
    assert (outside / "secret").read_bytes() == b"outside secret"


def _deferred(mnt: Path) -> list[dict[str, object]]:
    from vfile import control

    result: list[dict[str, object]] = control.call(mnt, "journal.list", {},
                                                   timeout=20)["entries"]
    return result


#: a second uid of our own (no passwd entry needed), so runs in parallel do not meet
def _second_uid() -> int:
    return 40000 + os.getpid() % 20000


PREPARE = ("import os, sys, random\n"
           "from vfile import control\n"
           "uid = int(sys.argv[1])\n"
           "os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)\n"
           "os.environ.pop('XDG_RUNTIME_DIR', None)\n"
           "try:\n"
           "    print('USED', control.prepare_runtime_dir(control.runtime_dir()))\n"
           "except control.ControlError as err:\n"
           "    print('REFUSED', err); sys.exit(3)\n")


def test_runtime_dir_of_another_user_is_refused() -> None:
    """Without XDG_RUNTIME_DIR a non-root mount keeps its sockets in /tmp/vfile-UID: a
    directory someone else made there (to swap the embedded appliance's socket for a
    fake clamd answering OK) is refused, as is a symlink or a group/world-open mode."""
    assert os.getuid() == 0, "this test needs root to act as a second uid"
    uid = _second_uid()
    rundir = Path(f"/tmp/vfile-{uid}")
    assert not os.path.lexists(rundir), f"{rundir} exists before the test"

    def as_second() -> tuple[int, str]:
        proc = subprocess.run([sys.executable, "-c", PREPARE, str(uid)], capture_output=True,
                              text=True, timeout=60, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    elsewhere = Path(tempfile.mkdtemp(prefix="vfile-rt-"))
    try:
        rundir.mkdir(mode=0o777)  # made by another user (root here; uid 1000 alike)
        os.chmod(rundir, 0o777)
        code, out = as_second()
        assert code == 3 and "REFUSED" in out and str(rundir) in out and "owned by" in out, out
        rundir.rmdir()

        os.chown(elsewhere, uid, uid)
        os.chmod(elsewhere, 0o700)
        rundir.symlink_to(elsewhere)  # to a directory the user owns: still refused
        code, out = as_second()
        assert code == 3 and "symlink" in out, out
        rundir.unlink()

        rundir.mkdir()
        os.chown(rundir, uid, uid)
        os.chmod(rundir, 0o755)
        code, out = as_second()
        assert code == 3 and "0700" in out, out
        rundir.rmdir()

        code, out = as_second()  # absent: made by the user, 0700
        assert code == 0 and f"USED {rundir}" in out, out
        st = rundir.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == uid
        assert stat.S_IMODE(st.st_mode) == 0o700
        code, out = as_second()  # and used again
        assert code == 0, out
    finally:
        if rundir.is_symlink():
            rundir.unlink()
        elif rundir.exists():
            shutil.rmtree(rundir)
        shutil.rmtree(elsewhere, ignore_errors=True)


def _acl_xattr(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_access value (version 2; tag, perm, id per entry)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


# ACL tags (linux/posix_acl.h) and the undefined id of the owner/group/mask/other entries
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER, NOID = 0x01, 0x02, 0x04, 0x10, 0x20, 0xFFFFFFFF
READ_FILE = ("try:\n"
             "    open(sys.argv[1], 'rb').read(); print('READ')\n"
             "except PermissionError:\n"
             "    print('EACCES'); sys.exit(13)\n")


def test_an_acl_that_denies_is_honoured(shared: Path) -> None:
    """A file others may read (0644) whose ACL denies nobody: nobody is refused through
    the mount as natively. The kernel checks ACLs for a FUSE mount only if the daemon
    asks for FUSE_POSIX_ACL; without it, mode bits alone let nobody read the file."""
    src, mnt, _state = _tree(shared)
    secret = src / "secret"
    secret.write_bytes(b"not for nobody")
    os.chmod(secret, 0o644)
    os.setxattr(secret, "system.posix_acl_access", _acl_xattr(
        (USER_OBJ, 6, NOID), (USER, 0, 65534), (GROUP_OBJ, 4, NOID), (MASK, 4, NOID),
        (OTHER, 4, NOID)))
    code, out = _as_nobody(READ_FILE, str(secret))
    assert (code, out.strip()) == (13, "EACCES"), f"the source ignores ACLs here: {out}"
    with mounted(src, mnt, "--no-scan", "-o", "allow_other"):
        code, out = _as_nobody(READ_FILE, str(mnt / "secret"))
        assert (code, out.strip()) == (13, "EACCES"), out
        # ...and the owner still reads it
        assert (mnt / "secret").read_bytes() == b"not for nobody"
