"""Bad input at the bounds, round 12 (b27), through real mounts and the real CLI.

- Config values past any sane range (a `deadline` of 1e308 s, an interval of
  1e-300 s, a 400-digit size, a relative `state_dir`) were accepted: a hang, a busy
  loop, a traceback, a state directory below the server's working directory. Now
  `vfile mount` refuses them in one line naming the file, the key and the range
  (exit 3), and nothing is mounted.
- The state file the server reads at start besides the journal,
  `last-signature-version`: a FIFO there hung the start, non-UTF-8 bytes were a
  traceback, megabytes of it were taken as a version. Now anything but a short
  line in a regular file is logged and ignored (the mount scans as after a new
  version: nothing lost).
- The prewarm checkpoint: another user's checkpoint was believed (a run that skips
  everything), and the temporary file it was saved through was opened by name,
  following a symlink planted there (root's prewarm overwrote the link's target).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from filtering import filtering
from lifecycle import READER_UID
from mounting import force_unmount, is_mounted, mounted, vfile_cmd, wait_for, wait_gone
from outage import running_appliance
from servers import free_port

from vfile import control
from vfile.errors import Exit

pytestmark = pytest.mark.mount


def make_tree(src: Path) -> list[str]:
    rels = [f"d{i % 3}/f{i:02}.txt" for i in range(12)]
    for i, rel in enumerate(rels):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"file %d\n" % i)
    return sorted(rels, key=lambda p: p.split("/"))


def run_prewarm(mnt: Path, ckpt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vfile_cmd("prewarm", str(mnt), "--rate", "1000", "--checkpoint",
                                    str(ckpt), "--json"),
                          capture_output=True, text=True, timeout=120, check=False)


def _mount(source: Path, mountpoint: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(vfile_cmd("mount", "--state-dir", str(source.parent / "state"),
                                        "--config", str(conf), str(source), str(mountpoint)),
                              capture_output=True, text=True, check=False, timeout=60)
    finally:
        if is_mounted(mountpoint):
            subprocess.run(vfile_cmd("unmount", str(mountpoint)), check=False, timeout=60,
                           capture_output=True)
        force_unmount(mountpoint)
        assert wait_gone(mountpoint)


@pytest.mark.parametrize(("body", "key", "says"), [
    ('[[profile]]\nname = "default"\ndeadline = 1e308\n', "profile[0].deadline",
     "allowed 0.001s to 3600s"),
    ("[journal]\nsync_interval = 1e-300\n", "journal.sync_interval", "allowed 0.01s to 3600s"),
    ("[pool]\nprobe_interval = 1e-300\n", "pool.probe_interval", "allowed 0.05s to 86400s"),
    ('[[profile]]\nname = "default"\nmax_size = ' + "9" * 400 + "\n", "profile[0].max_size",
     "not a finite size"),
    ("[mount]\nfd_cache = 4294967296\n", "mount.fd_cache", "between 16 and 1048576"),
    ('[mount]\nstate_dir = "var/state"\n', "mount.state_dir", "relative path"),
], ids=["deadline", "sync_interval", "probe_interval", "huge-size", "fd_cache", "relative"])
def test_a_config_value_past_its_range_is_refused_and_nothing_mounted(  # noqa: PLR0917
        source: Path, mountpoint: Path, tmp_path: Path, body: str, key: str,
        says: str) -> None:
    conf = tmp_path / "guest.toml"
    conf.write_text(body)
    conf.chmod(0o644)
    res = _mount(source, mountpoint, conf)
    assert res.returncode == int(Exit.CONFIG), (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert str(conf) in lines[0] and key in lines[0] and says in lines[0], lines[0]
    assert not is_mounted(mountpoint)
    assert not (source.parent / "state").exists() or not any(
        (source.parent / "state").iterdir())


# --- last-signature-version ---------------------------------------------------------------

def _sig_bad(sig: Path, case: str) -> None:
    sig.unlink()
    if case == "fifo":
        os.mkfifo(sig, 0o600)
    elif case == "binary":
        sig.write_bytes(b"\xff\xfe\x00garbage\n")
    elif case == "huge":
        sig.write_bytes(b"v" * (4 << 20))
    elif case == "symlink":
        (sig.parent / "elsewhere").write_text("sig-from-elsewhere\n")
        sig.symlink_to("elsewhere")


@pytest.mark.parametrize("case", ["fifo", "binary", "huge", "symlink"])
def test_a_bad_signature_version_file_is_ignored_and_logged(tmp_path: Path,
                                                            case: str) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"clean\n")
    sig = state / "last-signature-version"
    with mounted(src, mnt, "--state-dir", str(state)):
        assert (mnt / "f").read_bytes() == b"clean\n"
        wait_for("the signature version saved", sig.exists)
    _sig_bad(sig, case)
    with mounted(src, mnt, "--state-dir", str(state)) as server:
        # It started (a FIFO hung it before), serves, and said why it ignored the file.
        assert (mnt / "f").read_bytes() == b"clean\n"
        st = control.call(str(mnt), "status", timeout=10)
        assert len(json.dumps(st)) < 1 << 20
        assert "ignoring" in server.log() and "last-signature-version" in server.log(), \
            server.log()[-2000:]


# --- the prewarm checkpoint ---------------------------------------------------------------

def test_prewarm_ignores_a_checkpoint_another_user_wrote(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rels = make_tree(src)
    ckpt = tmp_path / "prewarm.json"
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        # Another user's checkpoint saying everything is done: believed, nothing warmed.
        ckpt.write_text(json.dumps({"mountpoint": str(f.mnt), "done_through": rels[-1]}))
        os.chown(ckpt, READER_UID, READER_UID)
        res = run_prewarm(f.mnt, ckpt)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert (out["skipped"], out["opened"]) == (0, len(rels)), out
        assert "ignoring the checkpoint" in res.stderr, res.stderr


def test_prewarm_saves_its_checkpoint_through_no_planted_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    ckpt = tmp_path / "prewarm.json"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    # Where the old code wrote its temporary file, by name, following links.
    (tmp_path / "prewarm.tmp").symlink_to(victim)
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        res = run_prewarm(f.mnt, ckpt)
        assert res.returncode == 0, res.stderr
    assert victim.read_text() == "precious\n"
    assert not ckpt.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("prewarm.json.")]


# --- control commands with odd arguments --------------------------------------------------

NAN, INF = float("nan"), float("inf")
ODD_COMMANDS = [
    ("quiesce", {"max": NAN}, "'max'"), ("quiesce", {"max": INF}, "'max'"),
    ("quiesce", {"max": 1e308}, "'max'"), ("quiesce", {"reason": "x" * 5000}, "'reason'"),
    ("quiesce", {"reason": "a\nforged log line"}, "'reason'"),
    ("quiesce", {"reason": ["not", "text"]}, "'reason'"),
    ("drain", {"action": "rate", "files_per_s": NAN}, "'files_per_s'"),
    ("drain", {"action": "rate", "files_per_s": INF}, "'files_per_s'"),
    ("drain", {"action": "rate", "bytes_per_s": 1e308}, "'bytes_per_s'"),
    ("journal.list", {"limit": INF}, "'limit'"), ("journal.list", {"limit": NAN}, "'limit'"),
    ("memory", {"top": INF}, "'top'"), ("memory", {"top": 1e15}, "'top'"),
]


def test_control_commands_with_odd_numbers_get_a_clear_error(tmp_path: Path) -> None:
    """Before: NaN passed every `< minimum` check (a window with a NaN deadline, a NaN
    drain rate), infinity opened a window with no end, and int(inf) was an
    OverflowError: a traceback and "failed" rather than an error naming the key."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"clean\n")
    with mounted(src, mnt, "--state-dir", str(tmp_path / "state")) as server:
        before = control.call(str(mnt), "drain")
        accepted = []
        for cmd, args, key in ODD_COMMANDS:
            try:
                got = control.call(str(mnt), cmd, args, timeout=30)
            except control.ControlError as err:
                if key not in str(err) or "failed" in str(err):
                    accepted.append((cmd, args, str(err)[:200]))
            else:
                accepted.append((cmd, args, str(got)[:200]))
        assert accepted == [], "\n".join(repr(a)[:300] for a in accepted) + server.log()[-3000:]
        st = control.call(str(mnt), "status")
        assert not st["window"]["active"], st["window"]
        assert control.call(str(mnt), "drain") == before
        assert (mnt / "f").read_bytes() == b"clean\n"


# --- appliance URLs ---------------------------------------------------------------------

@pytest.mark.parametrize(("url", "says"), [
    ("icap://127.0.0.1:1344/av scan", "printable ASCII without spaces"),
    ("clamd://127.0.0.1:3310:3310", "in brackets"),
    ("clamd://scanner:secret@127.0.0.1:3310", "user or password"),
    ("clamd://127.0.0.1:\u0663\u0663\u0661\u0660", "printable ASCII"),
    ("clamd://" + "a" * 300 + ":3310", "at most 253"),
], ids=["space-in-service", "two-ports", "userinfo", "arabic-digits", "long-host"])
def test_an_odd_appliance_url_is_refused_and_nothing_mounted(
        source: Path, mountpoint: Path, tmp_path: Path, url: str, says: str) -> None:
    """Before, each was taken: a space reached the ICAP request line, "host:3310" was
    looked up as a host name, "user:pw@host" too, and another script's digits were a
    port; the mount then served in its fail modes against an appliance never reached."""
    conf = tmp_path / "guest.toml"
    conf.write_text(f"[mount]\nappliances = [{json.dumps(url)}]\n")
    conf.chmod(0o644)
    res = _mount(source, mountpoint, conf)
    assert res.returncode == int(Exit.CONFIG), (res.returncode, res.stderr)
    assert "mount.appliances[0]" in res.stderr and says in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("args", [["--rate", "nan"], ["--rate", "1e-300"],
                                  ["--rate", "inf"], ["--concurrency", "100000000"]],
                         ids=["nan", "tiny", "inf", "threads"])
def test_prewarm_pacing_out_of_range_is_a_usage_error(tmp_path: Path,
                                                      args: list[str]) -> None:
    """Before: --rate nan went unpaced (and printed NaN in its JSON), --rate 1e-300
    waited forever for its first file; now each is refused before anything opens."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        scans = f.gate()["scans"]
        res = subprocess.run(vfile_cmd("prewarm", str(f.mnt), "--checkpoint",
                                       str(tmp_path / "c.json"), *args),
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == int(Exit.USAGE), (res.returncode, res.stderr)
        assert "--rate must be from 0.01 to 1e+06" in res.stderr, res.stderr
        assert f.gate()["scans"] == scans


# --- journal CLI arguments ----------------------------------------------------------------

def test_journal_list_limit_below_one_is_a_usage_error(source: Path, mountpoint: Path,
                                                       tmp_path: Path) -> None:
    """`--limit -1` listed all entries but the last one (a Python slice), `--limit 0`
    none, both with exit 0: an operator took them for the journal's contents."""
    names = ["a", "b", "c"]
    for name in names:
        (source / name).write_bytes(b"data\n")
    state = tmp_path / "state"
    with mounted(source, mountpoint, "--appliance", f"clamd://127.0.0.1:{free_port()}",
                 "--fail-mode", "safe", "--state-dir", str(state)):
        for name in names:
            assert (mountpoint / name).read_bytes() == b"data\n"  # allowed, journaled

    def listed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(vfile_cmd("journal", "list", "--state-dir", str(state), *args),
                              capture_output=True, text=True, check=False, timeout=60)

    assert "3 deferred" in listed().stderr
    for bad in ("-1", "0"):
        res = listed("--limit", bad)
        assert res.returncode == int(Exit.USAGE), (bad, res.returncode, res.stderr)
        assert "--limit" in res.stderr, res.stderr
    assert "2 deferred" in listed("--limit", "2").stderr
