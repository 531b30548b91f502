"""`vfile journal …` and `vfile quarantine …` on a real journal, through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from vfile.cli import app
from vfile.errors import Exit
from vfile.journal import Exposure, Identity, Journal, QuarantineRecord, Reason

runner = CliRunner()
ID = Identity(3, 4, 1234, 5, 6)


def vfile(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A journal with three deferred files (one poisoned) and two quarantine records."""
    d = tmp_path / "state"
    qdir = tmp_path / "q"
    qdir.mkdir()

    async def fill() -> None:
        j = Journal.open(d, max_attempts=1)
        try:
            await j.defer("/src/a.doc", ID, Reason.UNAVAILABLE, "office",
                          exposure=Exposure(1000, 4242, "libreoffice", 1.0))
            await j.defer("/src/b.exe", ID, Reason.WINDOW, "default")
            seq = await j.defer("/src/c.zip", None, Reason.TIMEOUT, "default")
            await j.release("/src/c.zip", seq, "appliance reset the connection")
            for qid in ("q1", "q2"):
                (qdir / qid).write_bytes(b"X5O!P%@AP" + qid.encode())
                await j.add_quarantine(QuarantineRecord(
                    qid, str(tmp_path / f"restored-{qid}"), str(qdir / qid),
                    "Eicar-Test-Signature", 2.0, ID, "default"))
        finally:
            j.close()

    trio.run(fill)
    return d


def test_list_text_and_json(state: Path) -> None:
    code, out, err = vfile("journal", "list", "--state-dir", str(state))
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()] == ["/src/a.doc", "/src/b.exe",
                                                              "/src/c.zip"]
    assert "poisoned" in out.splitlines()[2] and "3 deferred" in err
    code, out, _ = vfile("journal", "list", "--state-dir", str(state), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["reason"] for r in rows] == ["unavailable", "window", "timeout"]
    assert rows[2]["poisoned"] is True


def test_show_prints_exposure_trail(state: Path) -> None:
    code, out, _ = vfile("journal", "show", "/src/a.doc", "--state-dir", str(state))
    assert code == 0
    assert "uid=1000 pid=4242 libreoffice" in out and "profile:         office" in out
    code, out, _ = vfile("journal", "show", "/src/a.doc", "--state-dir", str(state), "--json")
    assert json.loads(out)["exposures"][0]["command"] == "libreoffice"
    code, _, err = vfile("journal", "show", "/nope", "--state-dir", str(state))
    assert code == Exit.USAGE and "no deferred scan" in err


def test_stats(state: Path) -> None:
    code, out, _ = vfile("journal", "stats", "--state-dir", str(state), "--json")
    assert code == 0
    stats = json.loads(out)
    assert (stats["deferred"], stats["poisoned"], stats["quarantined"]) == (3, 1, 2)
    assert stats["bytes"] == 2 * ID.size
    code, out, _ = vfile("journal", "stats", "--state-dir", str(state))
    assert code == 0 and "deferred:" in out


def test_retry_purge_export(state: Path, tmp_path: Path) -> None:
    code, out, _ = vfile("journal", "retry", "/src/c.zip", "--state-dir", str(state))
    assert code == 0 and "1 entry reset" in out
    code, out, err = vfile("journal", "purge", "--state-dir", str(state), input="n\n")
    assert code == Exit.USAGE and "nothing purged" in err
    code, out, _ = vfile("journal", "purge", "/src/b.exe", "--state-dir", str(state), "--yes")
    assert code == 0 and "1 entry purged" in out
    code, out, _ = vfile("journal", "purge", "--poisoned", "--state-dir", str(state), "--yes")
    assert code == 0 and "0 entries purged" in out
    dest = tmp_path / "export.jsonl"
    code, _, _ = vfile("journal", "export", "--state-dir", str(state), "--output", str(dest))
    assert code == 0
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["/src/a.doc", "/src/c.zip"]
    assert rows[1]["poisoned"] is False
    code, out, _ = vfile("journal", "export", "--state-dir", str(state))
    assert out.count("\n") == 2


def test_quarantine_list_show_restore_delete(state: Path, tmp_path: Path) -> None:
    code, out, _ = vfile("quarantine", "list", "--state-dir", str(state))
    assert code == 0 and "q1" in out and "Eicar-Test-Signature" in out
    code, out, _ = vfile("quarantine", "show", "q1", "--state-dir", str(state), "--json")
    assert json.loads(out)["original_path"] == str(tmp_path / "restored-q1")
    # Restore refuses to overwrite an existing file, and then keeps the record.
    (tmp_path / "restored-q1").write_text("someone else's file")
    code, _, err = vfile("quarantine", "restore", "q1", "--state-dir", str(state))
    assert code == Exit.USAGE and "refusing to overwrite" in err
    assert (tmp_path / "restored-q1").read_text() == "someone else's file"
    assert (tmp_path / "q" / "q1").exists()
    code, out, _ = vfile("quarantine", "restore", "q1", "--to", str(tmp_path / "elsewhere"),
                         "--state-dir", str(state))
    assert code == 0 and (tmp_path / "elsewhere").read_bytes().startswith(b"X5O!P%@AP")
    assert not (tmp_path / "q" / "q1").exists()
    code, out, _ = vfile("quarantine", "delete", "q2", "--state-dir", str(state))
    assert code == 0 and not (tmp_path / "q" / "q2").exists()
    code, out, err = vfile("quarantine", "list", "--state-dir", str(state), "--json")
    assert json.loads(out) == []
    code, _, err = vfile("quarantine", "show", "q2", "--state-dir", str(state))
    assert code == Exit.USAGE and "no quarantine record" in err


def test_bad_journal_is_one_line_and_exit_journal(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"\x00garbage" * 2000)
    before = (bad / "data.mdb").read_bytes()
    for args in (["journal", "list"], ["journal", "purge", "--yes"], ["quarantine", "list"]):
        code, out, err = vfile(*args, "--state-dir", str(bad))
        assert code == Exit.JOURNAL, (args, out, err)
        assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    assert (bad / "data.mdb").read_bytes() == before
    code, _, err = vfile("journal", "list", "--state-dir", str(tmp_path / "missing"))
    assert code == Exit.JOURNAL and not (tmp_path / "missing").exists()
    code, _, err = vfile("journal", "list")
    assert code == Exit.USAGE and "--state-dir" in err


def test_restore_without_to_goes_into_the_source(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Records keep the path relative to the source: restore puts the file back there
    (not relative to the caller's cwd), never over an existing file, never through a
    symlink planted in the source, and says where."""
    state, qdir, src = tmp_path / "state", tmp_path / "q", tmp_path / "src"
    for d in (qdir, src / "sub" / "dir", tmp_path / "cwd", tmp_path / "outside"):
        d.mkdir(parents=True)
    (src / "link").symlink_to(tmp_path / "outside")

    async def fill() -> None:
        j = Journal.open(state)
        try:
            for qid, rel in (("r1", "sub/dir/a.com"), ("r2", "sub/taken.com"),
                             ("r3", "link/escape.com")):
                (qdir / qid).write_bytes(b"quarantined " + qid.encode())
                await j.add_quarantine(QuarantineRecord(qid, rel, str(qdir / qid), "Eicar",
                                                        2.0, ID, "default"))
        finally:
            j.close()

    trio.run(fill)
    (src / "sub" / "taken.com").write_text("someone else's file")
    monkeypatch.chdir(tmp_path / "cwd")
    code, _, err = vfile("quarantine", "restore", "r1", "--state-dir", str(state))
    assert code == Exit.USAGE and "--source" in err
    assert not (tmp_path / "cwd" / "sub").exists()

    code, out, err = vfile("quarantine", "restore", "r1", "--state-dir", str(state),
                           "--source", str(src))
    assert code == 0, err
    assert (src / "sub" / "dir" / "a.com").read_bytes() == b"quarantined r1"
    assert f"restored r1 to {src / 'sub' / 'dir' / 'a.com'}" in out
    assert not (qdir / "r1").exists()

    code, _, err = vfile("quarantine", "restore", "r2", "--state-dir", str(state),
                         "--source", str(src))
    assert code == Exit.USAGE and "refusing to overwrite" in err
    assert (src / "sub" / "taken.com").read_text() == "someone else's file"
    assert (qdir / "r2").exists()

    code, _, err = vfile("quarantine", "restore", "r3", "--state-dir", str(state),
                         "--source", str(src))
    assert code == Exit.USAGE and "symlink" in err, err
    assert not (tmp_path / "outside" / "escape.com").exists() and (qdir / "r3").exists()
    code, out, _ = vfile("quarantine", "list", "--state-dir", str(state), "--json")
    assert {r["id"] for r in json.loads(out)} == {"r2", "r3"}


def test_gc_collects_verdicts_of_gone_files_and_old_signatures(tmp_path: Path) -> None:
    """`vfile journal gc`: verdicts for identities no file has any more, or at a
    signature version no longer in use, go; current ones stay."""
    from vfile.journal.records import VerdictRecord

    state, src = tmp_path / "state", tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c", "d"):
        (src / name).write_text(f"content {name}\n")
    ident = {name: Identity.from_stat((src / name).stat()) for name in ("a", "b", "c", "d")}
    old_a = Identity(ident["a"].dev, ident["a"].ino, 3, 1, 1)  # a before a rewrite
    (src / "d").unlink()

    async def fill() -> None:
        j = Journal.open(state)
        try:
            for i, sig in ((ident["a"], "S2"), (ident["b"], "S2"), (old_a, "S2"),
                           (ident["c"], "S1"), (ident["d"], "S2")):
                await j.put_verdict(VerdictRecord(i, sig, "clean", "", "app", 1.0))
        finally:
            j.close()

    trio.run(fill)
    (state / "last-signature-version").write_text("S2\n")
    code, out, err = vfile("journal", "gc", "--state-dir", str(state), "--source", str(src))
    assert code == 0, err
    assert "3 of 5 verdicts collected" in out
    code, out, _ = vfile("journal", "stats", "--state-dir", str(state), "--json")
    assert json.loads(out)["verdicts"] == 2
    code, _, err = vfile("journal", "gc", "--state-dir", str(state))
    assert code == Exit.USAGE and "--source" in err
