"""vfile.filter.actions on real files and a real Journal: what an infected file gets."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfile.config.model import InfectedAction
from vfile.errors import Exit, UserError
from vfile.filter import actions as A
from vfile.filter.actions import Actions, open_parent
from vfile.journal.records import Identity, VerdictRecord
from vfile.journal.store import Journal


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    (path / "d").mkdir(parents=True)
    return path


@pytest.fixture
def source_fd(source: Path) -> Iterator[int]:
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state")
    yield j
    j.close()


def _verdict(path: Path) -> VerdictRecord:
    return VerdictRecord(Identity.from_stat(os.stat(path)), "sig1", "infected", "Test.Sig",
                         "clamd:///x.sock", 1.0)


async def test_quarantine_moves_the_file_and_records_it(source: Path, source_fd: int,
                                                        journal: Journal, tmp_path: Path) -> None:
    (source / "d/bad").write_bytes(b"bad")
    os.chmod(source / "d/bad", 0o644)
    acts = Actions(source_fd, journal, quarantine_dir=str(tmp_path / "q"))
    said = await acts.apply(InfectedAction.QUARANTINE, "d/bad", _verdict(source / "d/bad"),
                            profile="p")
    assert not (source / "d/bad").exists()
    [rec] = journal.list_quarantine()
    assert said == f"quarantined as {rec.quarantine_path}"
    moved = tmp_path / "q" / os.path.basename(rec.quarantine_path)
    assert str(moved) == rec.quarantine_path and moved.read_bytes() == b"bad"
    assert stat.S_IMODE(moved.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o700
    assert (rec.original_path, rec.signature, rec.profile) == ("d/bad", "Test.Sig", "p")


async def test_quarantine_across_filesystems_copies_then_unlinks(
        source: Path, source_fd: int, journal: Journal, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    (source / "bad").write_bytes(b"x" * 3_000_000)
    real_rename = os.rename

    def no_cross_device(src: object, dst: object, **kw: object) -> None:
        if str(dst).startswith(str(tmp_path / "q")):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(A.os, "rename", no_cross_device)
    acts = Actions(source_fd, journal, quarantine_dir=str(tmp_path / "q"))
    await acts.apply(InfectedAction.QUARANTINE, "bad", _verdict(source / "bad"), profile="p")
    assert not (source / "bad").exists()
    [moved] = (tmp_path / "q").iterdir()
    assert moved.read_bytes() == b"x" * 3_000_000
    assert stat.S_IMODE(moved.stat().st_mode) == 0o600


def test_a_quarantine_dir_inside_the_source_is_refused(source: Path, source_fd: int,
                                                        journal: Journal) -> None:
    acts = Actions(source_fd, journal, quarantine_dir=str(source / "d" / "q"))
    with pytest.raises(UserError) as info:
        acts.prepare()
    assert info.value.exit_code == Exit.CONFIG and "inside the source" in info.value.message
    assert not (source / "d" / "q").exists()


async def test_rename_is_no_clobber_mode_000_and_remembered(source: Path, source_fd: int,
                                                            journal: Journal) -> None:
    (source / "d/bad").write_bytes(b"bad")
    (source / "d/bad.infected").write_bytes(b"an older one")
    verdict = _verdict(source / "d/bad")
    acts = Actions(source_fd, journal, quarantine_dir=None)
    said = await acts.apply(InfectedAction.RENAME, "d/bad", verdict, profile="p")
    assert said == "renamed to 'd/bad.1.infected'"
    assert (source / "d/bad.infected").read_bytes() == b"an older one"
    renamed = source / "d/bad.1.infected"
    assert stat.S_IMODE(renamed.stat().st_mode) == 0
    assert not (source / "d/bad").exists()
    rec = journal.get_verdict(Identity.from_stat(renamed.stat()), "sig1")
    assert rec is not None and rec.outcome == "infected"


async def test_delete(source: Path, source_fd: int, journal: Journal) -> None:
    (source / "bad").write_bytes(b"bad")
    acts = Actions(source_fd, journal, quarantine_dir=None)
    assert await acts.apply(InfectedAction.DELETE, "bad", _verdict(source / "bad"),
                            profile="p") == "deleted"
    assert not (source / "bad").exists()


async def test_deny_leaves_the_file(source: Path, source_fd: int, journal: Journal) -> None:
    (source / "bad").write_bytes(b"bad")
    acts = Actions(source_fd, journal, quarantine_dir=None)
    assert await acts.apply(InfectedAction.DENY, "bad", _verdict(source / "bad"),
                            profile="p") == "denied"
    assert (source / "bad").exists()


async def test_symlinks_are_never_followed(source: Path, source_fd: int, journal: Journal,
                                           tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    (source / "link").symlink_to(outside)
    (source / "file-link").symlink_to(outside / "precious")
    acts = Actions(source_fd, journal, quarantine_dir=str(tmp_path / "q"))
    v = VerdictRecord(Identity(0, 0, 0, 0, 0), "s", "infected", "Sig", "", 0.0)
    for action in (InfectedAction.DELETE, InfectedAction.QUARANTINE, InfectedAction.RENAME):
        for path in ("link/precious", "file-link"):
            said = await acts.apply(action, path, v, profile="p")
            assert "failed" in said
    assert (outside / "precious").read_bytes() == b"keep me"
    assert (source / "file-link").is_symlink()
    with pytest.raises(OSError):
        open_parent(source_fd, "../src/x")


async def test_hook_gets_the_details_in_its_environment(source: Path, source_fd: int,
                                                        journal: Journal,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    script = tmp_path / "hook.py"
    script.write_text("import os, sys\n"
                      f"open({str(out)!r}, 'w').write(' '.join(os.environ[k] for k in "
                      "('VFILE_PATH', 'VFILE_SIGNATURE', 'VFILE_PROFILE', 'VFILE_APPLIANCE')))\n"
                      "sys.exit(3)\n")
    (source / "bad").write_bytes(b"bad")
    acts = Actions(source_fd, journal, quarantine_dir=None)
    said = await acts.apply(InfectedAction.HOOK, "bad", _verdict(source / "bad"), profile="p",
                            hook=f"{sys.executable} {script}")
    assert said == "hook exited 3"
    assert out.read_text() == "bad Test.Sig p clamd:///x.sock"


async def test_a_hung_hook_is_killed(source: Path, source_fd: int, journal: Journal,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(A, "HOOK_DEADLINE", 0.2)
    acts = Actions(source_fd, journal, quarantine_dir=None)
    v = VerdictRecord(Identity(0, 0, 0, 0, 0), "s", "infected", "Sig", "", 0.0)
    said = await acts.apply(InfectedAction.HOOK, "bad", v, profile="p", hook="sleep 30")
    assert said == "hook killed after 0.2s"
    said = await acts.apply(InfectedAction.HOOK, "bad", v, profile="p",
                            hook="/nonexistent/hook")
    assert "failed" in said
