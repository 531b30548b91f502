"""Bad input through a real mount: each case has a defined, tested behaviour.

| input                               | behaviour                                        |
|-------------------------------------|--------------------------------------------------|
| a name with every byte but / and NUL| created, stat'ed, listed, read back, scanned     |
| 255-byte name / 256-byte name       | works / ENAMETOOLONG                             |
| a path close to PATH_MAX            | created and read back through the mount          |
| a file over the profile's max_size  | oversize rule: closed → EACCES, journal → allowed |
|                                     | and journaled (reason oversize)                  |
| a sparse file                       | scanned like any file, holes read as zeros       |
| fifo, character device              | never scanned, never journaled; a fifo is the    |
|                                     | kernel's own pipe: a blocking open of it does    |
|                                     | not stall the daemon                             |
| symlink loop / symlink out of source| ELOOP / the link is listed as it is (readlink);  |
|                                     | the daemon never scans what it points to         |
| rename / unlink racing a scan       | no crash; every file left is journaled or clean  |
| hostile config values               | exit 3, one message naming the key               |
| a corrupted journal                 | exit 7, nothing mounted, source files unchanged  |
"""

from __future__ import annotations

import errno
import os
import random
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mounting import force_unmount, is_mounted, mounted, wait_for
from outage import running_appliance, status, unaccounted, write_config
from servers import Samples

from vfile import control
from vfile.journal import Journal
from vfile.scanner.signatures import EICAR

EVERY_BYTE = bytes(b for b in range(1, 256) if b != ord("/"))  # 254 bytes


def _mount_args(app_url: str, cfg: Path, state: Path) -> tuple[str, ...]:
    return ("--appliance", app_url, "--config", str(cfg), "--state-dir", str(state))


def _entries(state: Path) -> dict[str, str]:
    j = Journal.open(state, readonly=True)
    try:
        return {e.path: str(e.reason) for e in j.list_deferred()}
    finally:
        j.close()


def _wait_settled(mnt: Path, deadline: float = 10.0) -> None:
    """Until no scan is in flight or pending (close scans run in the background), no
    create's intent is still queued for the journal (creates no longer wait for their
    commit) and the drain holds nothing."""
    end = time.monotonic() + deadline
    while True:
        st = status(mnt)
        gate, queued = st["gate"], st["journal"]["durability"]["in_flight"]
        if not gate["in_flight"] and not gate["pending_intents"] and not queued \
                and not st["drain"]["in_flight"]:
            return
        assert time.monotonic() < end, f"scans did not settle: {gate}, queued {queued}"
        time.sleep(0.05)


def test_hostile_names_paths_sizes_and_special_files(tmp_path: Path,
                                                      samples: Samples) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    extra = ('\n[[profile]]\nname = "bigclosed"\npaths = ["bigclosed/**"]\n'
             'fail_mode = "closed"\nmax_size = "64KiB"\ninfected_action = "deny"\n'
             '\n[[profile]]\nname = "bigsafe"\npaths = ["bigsafe/**"]\nfail_mode = "safe"\n'
             'max_size = "64KiB"\noversize = "journal"\ninfected_action = "deny"\n')
    cfg = write_config(tmp_path / "vfile.toml", extra_profile='infected_action = "deny"\n'
                       + extra)
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink("loop", src / "loop")
    os.symlink("/etc/passwd", src / "outside")
    os.symlink("../../../../../../../../etc", src / "dotdot")
    for d in ("bigclosed", "bigsafe", "long"):
        (src / d).mkdir()
    big = random.Random(1).randbytes(100_000)
    (src / "bigclosed" / "f").write_bytes(big)
    (src / "bigsafe" / "f").write_bytes(big)
    with (src / "sparse").open("wb") as f:
        f.seek(8 << 20)
        f.write(b"tail")
    with running_appliance(samples.sigdir) as app, \
            mounted(src, mnt, *_mount_args(app.url, cfg, state)):
        bmnt = os.fsencode(mnt)
        # every byte but '/' and NUL, as one name: create, stat, readdir, open, scan
        weird = bmnt + b"/" + EVERY_BYTE
        with open(weird, "wb") as f:
            f.write(b"clean content\n")
        assert os.stat(weird).st_size == 14
        assert EVERY_BYTE in os.listdir(bmnt)
        with open(weird, "rb") as f:
            assert f.read() == b"clean content\n"
        infected = bmnt + b"/" + EVERY_BYTE[::-1]
        with open(infected, "wb") as f:
            f.write(EICAR)
        _wait_settled(mnt)
        with pytest.raises(PermissionError):
            open(infected, "rb").close()  # scanned under its odd name: infected
        # maximum-length names, and one byte more
        name255 = b"n" * 255
        with open(bmnt + b"/" + name255, "wb") as f:
            f.write(b"x")
        assert name255 in os.listdir(bmnt)
        with pytest.raises(OSError) as err:
            open(bmnt + b"/" + b"n" * 256, "wb").close()
        assert err.value.errno == errno.ENAMETOOLONG
        # a path close to PATH_MAX (4096): nested 200-byte directories
        path = mnt / "long"
        while len(os.fsencode(path)) < 4096 - 2 * 201 - 1:
            path = path / ("d" * 200)
            path.mkdir()
        deep = path / ("f" * 200)
        assert len(os.fsencode(deep)) > 3500
        deep.write_bytes(b"deep")
        assert deep.read_bytes() == b"deep"
        # oversize: closed profile denies, journal rule allows and journals
        with pytest.raises(PermissionError):
            (mnt / "bigclosed" / "f").read_bytes()
        assert (mnt / "bigsafe" / "f").read_bytes() == big
        # sparse: scanned like any file, holes read back as zeros
        scans = status(mnt)["gate"]["scans"]
        data = (mnt / "sparse").read_bytes()
        assert len(data) == (8 << 20) + 4 and data[:4096] == bytes(4096)
        assert status(mnt)["gate"]["scans"] == scans + 1
        # fifos and devices: never scanned; a blocking fifo open does not stall the daemon
        # (first let the close scans of the files written above finish, and keep the
        # drain from scanning a file whose open scan timed out on a loaded machine:
        # both count as scans too)
        control.call(mnt, "drain", {"action": "pause"}, timeout=10)
        wait_for("the gate and the drain to be idle",
                 lambda: (s := status(mnt))["gate"]["in_flight"] == 0
                 and s["gate"]["pending_intents"] == 0 and s["drain"]["in_flight"] == 0)
        scans = status(mnt)["gate"]["scans"]
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append((mnt / "fifo").read_bytes()),
                                  daemon=True)
        reader.start()
        time.sleep(0.2)  # the reader now blocks in open() for a writer
        started = time.monotonic()
        assert (mnt / "sparse").stat().st_size > 0  # the daemon still serves
        assert os.listdir(mnt)
        assert time.monotonic() - started < 5.0
        # A fifo on a FUSE mount is a pipe of the kernel's own (not the source's
        # fifo): the daemon never sees its opens, reads or writes.
        with open(mnt / "fifo", "wb") as w:
            w.write(b"through the fifo")
        reader.join(10)
        assert got == [b"through the fifo"]
        fd = os.open(mnt / "fifo", os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
        with pytest.raises(OSError):  # FUSE mounts are nodev, or the daemon refuses
            (mnt / "null").read_bytes()
        assert status(mnt)["gate"]["scans"] == scans
        control.call(mnt, "drain", {"action": "resume"}, timeout=10)
        # symlinks: a loop is ELOOP; links out of the source are listed, not followed
        with pytest.raises(OSError) as err:
            (mnt / "loop").read_bytes()
        assert err.value.errno == errno.ELOOP
        assert os.readlink(mnt / "outside") == "/etc/passwd"
        assert os.readlink(mnt / "dotdot") == "../../../../../../../../etc"
        assert stat.S_ISLNK(os.lstat(mnt / "outside").st_mode)
        _wait_settled(mnt)
        entries = _entries(state)
        sig = status(mnt)["appliances"][0]["sig_version"]
    assert not is_mounted(mnt)
    assert entries.get("bigsafe/f") == "oversize"
    for special in ("fifo", "null", "loop", "outside", "dotdot", "sparse"):
        assert special not in entries
    # every file written through the mount was scanned (or journaled): odd names too
    # every file written through the mount was scanned or journaled, odd names too;
    # left without either: the oversize file the closed profile denies (never served)
    # and the EICAR, which has its infected verdict instead
    infected_name = os.fsdecode(EVERY_BYTE[::-1])
    assert unaccounted(src, state, sig) == sorted(["bigclosed/f", infected_name])


def test_rename_and_unlink_racing_scans(tmp_path: Path, samples: Samples) -> None:
    """Writers close files (starting close scans) while others rename and unlink them."""
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(tmp_path / "vfile.toml")
    rng = random.Random(7)
    errors: list[BaseException] = []
    stop = time.monotonic() + 4.0

    def churn(k: int) -> None:
        r = random.Random(k)
        try:
            while time.monotonic() < stop:
                a, b = mnt / f"r{r.randint(0, 9)}", mnt / f"r{r.randint(0, 9)}"
                try:
                    op = r.choice(["write", "write", "rename", "unlink", "read"])
                    if op == "write":
                        a.write_bytes(r.randbytes(r.choice([10, 200_000])))
                    elif op == "rename":
                        os.rename(a, b)
                    elif op == "unlink":
                        a.unlink()
                    else:
                        a.read_bytes()
                except FileNotFoundError:
                    pass  # another thread got there first
        except BaseException as err:
            errors.append(err)

    with running_appliance(samples.sigdir) as app, \
            mounted(src, mnt, *_mount_args(app.url, cfg, state)) as server:
        threads = [threading.Thread(target=churn, args=(rng.random(),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        _wait_settled(mnt)
        assert server.proc.poll() is None, server.log()
        sig = status(mnt)["appliances"][0]["sig_version"]
        assert "Traceback" not in server.log()
    assert unaccounted(src, state, sig) == []
    # no entry for a file that is gone stays without the drain noticing: every
    # journal path that has no file is one the drain removes as gone (not an error)
    assert set(_entries(state)) - {p.name for p in src.iterdir()} <= {
        p for p in _entries(state) if not (src / p).exists()}


HOSTILE = [
    ('[pool]\nattempt_timeout = -1\n', "pool.attempt_timeout"),
    ('[pool]\nattempt_timeout = nan\n', "pool.attempt_timeout"),
    ('[[profile]]\nname = "default"\ndeadline = inf\n', "profile[0].deadline"),
    ('[[profile]]\nname = "default"\ndeadline = nan\n', "profile[0].deadline"),
    ('[pool]\nretries = 100000000000000000000\n', "pool.retries"),
    ('[[profile]]\nname = "x"\npaths = ["a"]\nmax_size = "-5"\n', "profile[0].max_size"),
    ('[[profile]]\nname = "x"\npaths = ["a"]\nmax_size = nan\n', "profile[0].max_size"),
    ('[[profile]]\nname = "x"\npaths = ["a"]\nmax_size = -inf\n', "profile[0].max_size"),
    ('[[profile]]\nname = "x\\u0000y"\npaths = ["a"]\n', "profile[0].name"),
    ('[[profile]]\nname = "x"\npaths = ["a"]\nfail_mode = 5\n', "profile[0].fail_mode"),
    ('[mount]\nappliances = ["gopher://x"]\n', "mount.appliances"),
    ('[mount]\nbogus = 1\n', "mount.bogus"),
    ('[[profile]]\nname = "x"\npaths = ["a"]\n[profile.quota]\nlow_water = nan\n',
     "profile[0].quota.low_water"),
]


@pytest.mark.parametrize(("text", "key"), HOSTILE)
def test_hostile_config_exits_3_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    code, stderr = _refused_mount("--config", str(cfg), "--state-dir", str(tmp_path / "state"),
                                  str(src), str(mnt))
    assert code == 3, stderr
    assert key in stderr, stderr
    assert not is_mounted(mnt)


def _refused_mount(*args: str) -> tuple[int, str]:
    """Run a mount that must be refused; if it mounts after all, take it down and fail."""
    proc = subprocess.Popen([sys.executable, "-m", "vfile", "mount", "--foreground", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        force_unmount(args[-1])
        proc.kill()
        proc.communicate()
        raise AssertionError("the mount was not refused") from None
    return proc.returncode, stderr


def test_corrupted_journal_refuses_to_mount(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    (src / "keep").write_bytes(b"precious")
    with mounted(src, mnt, "--state-dir", str(state)):
        (mnt / "new").write_bytes(b"written through vfile")
    data = state / "data.mdb"
    blob = bytearray(data.read_bytes())
    blob[: 8192] = random.Random(3).randbytes(8192)  # both LMDB meta pages
    data.write_bytes(bytes(blob))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    code, stderr = _refused_mount("--state-dir", str(state), str(src), str(mnt))
    assert code == 7, stderr
    assert str(state) in stderr
    assert not is_mounted(mnt)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert data.read_bytes() == bytes(blob), "the journal itself is left for forensics"
