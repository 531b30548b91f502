"""Routes by which a file could escape scanning, tried as a hostile local user would
(issue 13), each through a real mount: hard links, names with a newline, a
known-infected file after a metadata change, partial scans of oversize files,
RENAME_EXCHANGE, metadata-only changes, a concurrent writer's unflushed bytes,
same-tick rewrites.

The mount has the issue's configuration: a `tmp/**` profile with `triggers = []`,
a closed `uploads/**` profile, and a safe default with `max_size = "1MiB"`.
The appliance is the built-in one as a process (fault switchable at run time).
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from escaping import escape_mount, quiesced, read_errno
from lifecycle import Tree, cli, journal_rows, open_errno, wait_until
from mounting import Server, mounted
from outage import running_appliance, status, unaccounted

from vfile.filter.racy import TICK_NS
from vfile.passthrough.syscalls import RENAME_EXCHANGE, renameat2
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount


def sig_of(t: Tree) -> str:
    """The signature version the mount persisted (it writes it periodically)."""
    path = t.state / "last-signature-version"
    wait_until(path.exists, "the mount persisted its signature version")
    return path.read_text().strip()


def live_rows(t: Tree) -> list[dict[str, Any]]:
    """Journal rows, each checked to name no dead file ("x (deleted)")."""
    rows = journal_rows(t.mountpoint)
    for r in rows:
        assert "(deleted)" not in r["path"], rows
    return rows


# --- 1. hard links ---------------------------------------------------------------------------


def test_link_from_an_excluded_name_into_a_closed_profile_is_scanned(tree: Tree) -> None:
    """`cp eicar tmp/x; ln tmp/x uploads/evil.exe; cat uploads/evil.exe` is denied; and
    while the file has a scanned name, its excluded name does not serve it either."""
    with escape_mount(tree):
        mnt = tree.mountpoint
        (mnt / "tmp" / "x").write_bytes(EICAR)          # tmp/**: never scanned
        assert read_errno(mnt / "tmp" / "x") == (0, EICAR)
        os.link(mnt / "tmp" / "x", mnt / "uploads" / "evil.exe")
        assert read_errno(mnt / "uploads" / "evil.exe")[0] == errno.EACCES
        assert read_errno(mnt / "tmp" / "x")[0] == errno.EACCES


def test_link_made_behind_vfiles_back_is_scanned(tree: Tree) -> None:
    """The same with the link made in the source directly, and the excluded name the
    first vfile ever saw."""
    with escape_mount(tree):
        mnt = tree.mountpoint
        (tree.source / "tmp" / "y").write_bytes(EICAR)
        assert read_errno(mnt / "tmp" / "y") == (0, EICAR)
        os.link(tree.source / "tmp" / "y", tree.source / "uploads" / "e.exe")
        assert read_errno(mnt / "uploads" / "e.exe")[0] == errno.EACCES


def test_unlinking_one_name_keeps_the_entry_of_the_other(tree: Tree) -> None:
    """Appliance down: a written file is journaled; a second name is made in the source;
    unlinking the first name through the mount must leave the file accounted for under
    its live name, and the drain scans that name (never a dead one)."""
    with escape_mount(tree, "refuse") as (app, _server):
        mnt = tree.mountpoint
        (mnt / "a").write_bytes(b"written during the outage\n")
        assert [r["path"] for r in live_rows(tree)] == ["a"]
        os.link(tree.source / "a", tree.source / "b")
        os.unlink(mnt / "a")
        rows = live_rows(tree)
        assert [r["path"] for r in rows] == ["b"], rows
        app.set_fault("none")
        wait_until(lambda: journal_rows(mnt) == [], "the journal drained")
        assert status(mnt)["drain"]["done"]["clean"] >= 1
        sig = sig_of(tree)
        assert unaccounted(tree.source, tree.state, sig) == []


def test_open_after_the_first_name_is_unlinked_journals_a_live_name(tree: Tree) -> None:
    """Appliance down: x is opened (so vfile knows the inode as "x"), linked as y, x
    unlinked; an open of y must be journaled under "y", not under "x (deleted)"; a
    decoy named "x (deleted)" is never what the drain scans."""
    with escape_mount(tree, "refuse") as (app, _server):
        mnt = tree.mountpoint
        (tree.source / "x").write_bytes(EICAR)
        assert read_errno(mnt / "x") == (0, EICAR)      # safe: allowed, journaled
        os.link(mnt / "x", mnt / "y")
        os.unlink(mnt / "x")
        (tree.source / "x (deleted)").write_bytes(b"a clean decoy\n")
        assert read_errno(mnt / "y") == (0, EICAR)
        paths = sorted(r["path"] for r in journal_rows(mnt))
        assert paths == ["y"], paths
        app.set_fault("none")
        wait_until(lambda: journal_rows(mnt) == [], "the journal drained")
        assert status(mnt)["drain"]["done"]["infected"] >= 1
        assert read_errno(mnt / "y")[0] == errno.EACCES


# --- 4. names with a newline -----------------------------------------------------------------


def test_a_newline_in_a_name_stays_in_its_profile(tree: Tree) -> None:
    """`uploads/a\\nb` belongs to the closed `uploads/**` profile: during a window it
    is denied, like `uploads/ab`, not served by the safe default."""
    with escape_mount(tree):
        mnt = tree.mountpoint
        for name in ("ab", "a\nb", "\n", "a\rb\x7f"):
            (tree.source / "uploads" / name).write_bytes(b"unscanned\n")
        res = cli("quiesce", str(mnt), "--max", "5m")
        assert res.returncode == 0, res.stderr
        try:
            for name in ("ab", "a\nb", "\n", "a\rb\x7f"):
                assert open_errno(mnt / "uploads" / name) == errno.EACCES, repr(name)
        finally:
            assert cli("resume", str(mnt)).returncode == 0


# --- 5. a known-infected file stays denied ------------------------------------------------------


def test_infected_stays_denied_after_touch_chmod_rename_in_a_window(tree: Tree) -> None:
    """`cat bad` denied; touch, chmod, rename; in a window `cat` is still denied; only
    new content that a scan says is clean is served again."""
    with escape_mount(tree):
        mnt = tree.mountpoint
        (tree.source / "bad").write_bytes(EICAR)
        assert read_errno(mnt / "bad")[0] == errno.EACCES
        os.utime(mnt / "bad")
        with quiesced(mnt):
            assert read_errno(mnt / "bad")[0] == errno.EACCES
        os.chmod(mnt / "bad", 0o600)
        os.rename(mnt / "bad", mnt / "renamed")
        with quiesced(mnt):
            assert read_errno(mnt / "renamed")[0] == errno.EACCES
            (mnt / "renamed").write_bytes(b"clean now\n")  # a write-only open is allowed
            assert read_errno(mnt / "renamed")[0] == errno.EACCES  # not scanned yet
        wait_until(lambda: read_errno(mnt / "renamed") == (0, b"clean now\n"),
                   "the new content is scanned clean")
        os.utime(mnt / "renamed")
        with quiesced(mnt):  # taint cleared: an ordinary safe file again
            assert read_errno(mnt / "renamed") == (0, b"clean now\n")


def test_infected_stays_denied_across_a_remount_in_an_outage(tree: Tree) -> None:
    """The taint is durable: found infected, touched, remounted with the appliance down."""
    with escape_mount(tree):
        (tree.source / "bad").write_bytes(EICAR)
        assert read_errno(tree.mountpoint / "bad")[0] == errno.EACCES
        os.utime(tree.mountpoint / "bad")
    with escape_mount(tree, "refuse"):
        assert read_errno(tree.mountpoint / "bad")[0] == errno.EACCES


# --- 3. a scan of a prefix is not a verdict on the whole file -----------------------------------

#: over the profiles' 1 MiB max_size and the default scan_first (16 MiB)
BIG = 17 << 20


def _big_profile(fail_mode: str, oversize: str) -> str:
    first = 'scan_first = "64KiB"\n' if oversize == "scan-first" else ""
    return (f'[[profile]]\nname = "big"\npaths = ["big/**"]\nfail_mode = "{fail_mode}"\n'
            f'max_size = "1MiB"\noversize = "{oversize}"\n{first}'
            'infected_action = "deny"\n')


@contextmanager
def sig_mount(tree: Tree, sigdir: Path, profiles: str) -> Iterator[Server]:
    """A mount on a built-in appliance that loads `sigdir`'s hash signatures."""
    with running_appliance(sigdir) as app:
        conf = tree.root / "vfile.toml"
        conf.write_text(f'[mount]\nappliances = ["{app.url}"]\nstate_dir = "{tree.state}"\n'
                        '[pool]\nprobe_interval = "200ms"\nbreaker_cooldown = "500ms"\n'
                        + profiles)
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)) as server:
            yield server


def test_a_prefix_scan_never_becomes_a_full_verdict(tree: Tree) -> None:
    """A 17 MiB file whose whole-file hash is a signature, in a safe profile with
    `oversize = "journal"`: the drain does not store a scan of its first 16 MiB as
    a clean verdict (the entry stays, listed as unscannable with its reason), and a
    stricter rule later (closed, oversize deny) is not fooled by one; a
    `scan-first` rule, which asks for a prefix only, is served by a prefix scan."""
    sigdir = tree.root / "sigs"
    sigdir.mkdir()
    data = os.urandom(BIG)
    (sigdir / "big.hdb").write_text(f"{hashlib.md5(data).hexdigest()}:{BIG}:Big.Whole.File\n")
    (tree.source / "big").mkdir()
    (tree.source / "big" / "f").write_bytes(data)
    mnt = tree.mountpoint
    with sig_mount(tree, sigdir, _big_profile("safe", "journal")):
        assert read_errno(mnt / "big" / "f") == (0, data)   # allowed, journaled (rule)
        wait_until(lambda: status(mnt)["drain"]["done"].get("unscannable", 0)
                   + status(mnt)["drain"]["done"]["clean"] >= 1, "the drain looked at it")
        [row] = journal_rows(mnt)
        assert row["path"] == "big/f" and row["reason"] == "oversize", row
        assert row["poisoned"] and "max_size" in row["last_error"], row
        assert status(mnt)["drain"]["done"]["clean"] == 0
    with sig_mount(tree, sigdir, _big_profile("closed", "deny")):
        assert read_errno(mnt / "big" / "f")[0] == errno.EACCES
    with sig_mount(tree, sigdir, _big_profile("closed", "scan-first")):
        assert read_errno(mnt / "big" / "f") == (0, data)   # the rule asked for 64 KiB
    with sig_mount(tree, sigdir, _big_profile("closed", "deny").replace('"1MiB"', "0")):
        assert read_errno(mnt / "big" / "f")[0] == errno.EACCES  # the whole file: infected


# --- 7. RENAME_EXCHANGE ---------------------------------------------------------------------------


def _exchange(mnt: Path, a: str, b: str) -> None:
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        renameat2(fd, a.encode(), fd, b.encode(), RENAME_EXCHANGE)
    finally:
        os.close(fd)


def _read_as(command: str, path: Path) -> None:
    """Open `path` from a process named `command` (its exposure names it)."""
    subprocess.run([command, "-c", "1", str(path)] if command == "head" else [command, str(path)],
                   capture_output=True, check=True, timeout=60)


def test_exchange_keeps_every_entry_with_its_file(tree: Tree) -> None:
    """Appliance down: files p (EICAR, read by `cat`) and q (read by `head`), and
    directories d1/f (EICAR) and d2/g, all journaled. After exchanging p<->q and
    d1<->d2 each entry names its file (identity and who opened it), and once the
    appliance is back the drain finds EICAR where it now is."""
    with escape_mount(tree, "refuse") as (app, _server):
        mnt, src = tree.mountpoint, tree.source
        (src / "d1").mkdir()
        (src / "d2").mkdir()
        for rel, data in (("p", EICAR), ("q", b"q clean\n"), ("d1/f", EICAR),
                          ("d2/g", b"g clean\n")):
            (src / rel).write_bytes(data)
        _read_as("cat", mnt / "p")
        _read_as("head", mnt / "q")
        _read_as("cat", mnt / "d1" / "f")
        _read_as("head", mnt / "d2" / "g")
        _exchange(mnt, "p", "q")
        _exchange(mnt, "d1", "d2")
        rows = {r["path"]: r for r in journal_rows(mnt)}
        assert sorted(rows) == ["d1/g", "d2/f", "p", "q"], sorted(rows)
        for rel, reader in (("q", "cat"), ("p", "head"), ("d2/f", "cat"), ("d1/g", "head")):
            assert rows[rel]["identity"]["ino"] == os.stat(src / rel).st_ino, rel
            commands = {e["command"] for e in rows[rel]["exposures"]}
            assert reader in commands and ({"cat", "head"} - {reader}).isdisjoint(commands), \
                rows[rel]
        app.set_fault("none")
        wait_until(lambda: journal_rows(mnt) == [], "the journal drained")
        assert status(mnt)["drain"]["done"]["infected"] == 2
        for rel in ("q", "d2/f"):
            assert read_errno(mnt / rel)[0] == errno.EACCES, rel
        for rel in ("p", "d1/g"):
            assert read_errno(mnt / rel)[0] == 0, rel
        sig = sig_of(tree)
        # every file has a clean verdict but the two infected ones (denied above)
        assert unaccounted(src, tree.state, sig) == ["d2/f", "q"]


# --- 8. metadata-only changes -------------------------------------------------------------------


def test_metadata_changes_keep_the_verdict_or_are_journaled(tree: Tree) -> None:
    """A scanned file is chmodded, touched and chowned through the mount while the
    appliance is down: each file keeps a verdict for its new identity (content
    provably unchanged) or has a journal entry; never neither. A file with no
    verdict that is touched is journaled."""
    with escape_mount(tree) as (app, _server):
        mnt, src = tree.mountpoint, tree.source
        for name in ("m", "t", "o"):
            (src / name).write_bytes(f"clean {name}\n".encode())
        time.sleep(2 * TICK_NS / 1e9)  # past the timestamp tick: verdicts are kept
        for name in ("m", "t", "o"):
            assert read_errno(mnt / name)[0] == 0  # scanned, verdict stored
        app.set_fault("refuse")
        (src / "never").write_bytes(b"never scanned\n")
        os.chmod(mnt / "m", 0o600)
        os.utime(mnt / "t", ns=(1, 2))
        os.chown(mnt / "o", 1000, 1000)
        os.utime(mnt / "never")
        sig = sig_of(tree)
        assert unaccounted(src, tree.state, sig) == []
        assert [r["path"] for r in journal_rows(mnt)] == ["never"]
        with quiesced(mnt):  # the kept verdicts serve the files without the appliance
            for name in ("m", "t", "o"):
                assert read_errno(mnt / name) == (0, f"clean {name}\n".encode())
            assert [r["path"] for r in journal_rows(mnt)] == ["never"]


# --- 2. a concurrent writer's bytes (writeback cache) -------------------------------------------


def test_a_reader_is_never_judged_from_content_older_than_it_sees(tree: Tree) -> None:
    """With the writeback cache on (the default) a writer's bytes sit in the kernel's
    page cache, not in the source, while a second open reads them: a closed profile
    denies that open, a safe one allows it and journals the exposure."""
    with escape_mount(tree):
        mnt, src = tree.mountpoint, tree.source
        for rel in ("uploads/f", "s"):
            (src / rel).write_bytes(b"clean\n")  # shorter than EICAR, which replaces it
            assert read_errno(mnt / rel)[0] == 0  # scanned clean
        with open(mnt / "uploads" / "f", "r+b") as w:
            w.write(EICAR)
            w.flush()
            assert read_errno(mnt / "uploads" / "f")[0] == errno.EACCES
        with open(mnt / "s", "r+b") as w:
            w.write(EICAR)
            w.flush()
            got = read_errno(mnt / "s")
            assert got[0] == 0 and got[1].startswith(EICAR)
            [row] = [r for r in journal_rows(mnt) if r["path"] == "s"]
            assert any(e["command"] == "pytest" or e["pid"] == os.getpid()
                       for e in row["exposures"]), row
        wait_until(lambda: read_errno(mnt / "uploads" / "f")[0] == errno.EACCES
                   and read_errno(mnt / "s")[0] == errno.EACCES, "the close scans found EICAR")


# --- 6. same-tick rewrites ("racy clean") ---------------------------------------------------------


@contextmanager
def coarse_source(tree: Tree) -> Iterator[None]:
    """The source on a loop-mounted ext2 with 128-byte inodes: whole-second
    timestamps, so a rewrite within the same second keeps (size, mtime, ctime)."""
    img = tree.root / "source.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", "-I", "128", str(img)], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["mount", "-o", "loop", str(img), str(tree.source)], check=True,
                   capture_output=True, timeout=60)
    try:
        os.chmod(tree.source, 0o777)
        yield
    finally:
        subprocess.run(["umount", "-l", str(tree.source)], check=False, capture_output=True,
                       timeout=60)


def test_a_same_tick_rewrite_does_not_inherit_the_clean_verdict(tree: Tree) -> None:
    """A file is scanned clean through the mount, then rewritten behind vfile's back
    with content of the same size within the same timestamp tick (one second on
    this source): the next open scans again and finds EICAR."""
    clean = b"y" * (len(EICAR) - 1) + b"\n"
    with coarse_source(tree), escape_mount(tree):
        src, mnt = tree.source, tree.mountpoint
        for attempt in range(10):
            name = f"r{attempt}"
            time.sleep(1.02 - time.time() % 1)  # the sequence fits in one second
            (src / name).write_bytes(clean)
            before = os.stat(src / name)
            assert read_errno(mnt / name) == (0, clean)
            with open(src / name, "r+b") as f:
                f.write(EICAR)
            after = os.stat(src / name)
            if (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
                    after.st_size, after.st_mtime_ns, after.st_ctime_ns):
                break
        else:
            raise AssertionError("no rewrite within one second in 10 tries")
        assert read_errno(mnt / name)[0] == errno.EACCES
