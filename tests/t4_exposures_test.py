"""Exposure records through a real mount: who opened a file unscanned is never erased.

During an outage two real uids read files unscanned. Then one file is
unlinked before the drain, another is replaced by a rename, and two are
rewritten with EICAR and found infected by the close scan (one quarantined,
one handed to the infected-action hook). The list of who opened each file
survives all of it, de-duplicated by (uid, command) with a count and the
first and last time, in `vfile journal list --json`, `vfile journal
exposures`, the quarantine record, the hook's environment and the audit log,
until an administrator clears it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from lifecycle import (
    READER_UID,
    WRITER_UID,
    Tree,
    as_user,
    cli,
    journal_rows,
    tree_config,
    wait_until,
)
from mounting import mounted
from outage import running_appliance, status

from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount


def _exposures(mnt: Path) -> dict[str, dict[str, Any]]:
    res = cli("journal", "exposures", "--mount", str(mnt), "--json")
    assert res.returncode == 0, res.stderr
    return {r["path"]: r for r in json.loads(res.stdout)}


def _who(exposures: list[dict[str, Any]]) -> dict[tuple[int, str], int]:
    return {(x["uid"], x["command"]): x["count"] for x in exposures}


def test_exposures_survive_unlink_rename_and_infection(tree: Tree) -> None:
    src, mnt = tree.source, tree.mountpoint
    for name in ("gone.txt", "target.txt", "later.com", "later.exe"):
        (src / name).write_text(f"harmless {name}\n")
        os.chmod(src / name, 0o666)
    eicar = tree.root / "eicar.src"
    eicar.write_bytes(EICAR)
    os.chmod(eicar, 0o644)
    hook_out = tree.root / "hook.out"
    hook = tree.root / "hook.sh"
    hook.write_text(f'#!/bin/sh\nprintf "%s" "$VFILE_EXPOSURES" > {hook_out}\n')
    os.chmod(hook, 0o755)
    audit = tree.root / "audit.jsonl"
    body = f'[[profile]]\nname = "hooked"\npaths = ["*.exe"]\ninfected_action = "hook"\n' \
           f'hook = "{hook}"\n'
    with running_appliance(fault="refuse") as app, \
            mounted(src, mnt, "-o", "allow_other", "--config", str(tree_config(tree, app, body)),
                    "--audit-log", str(audit)):
        for uid in (READER_UID, READER_UID, WRITER_UID):
            res = as_user(uid, "cat", str(mnt / "gone.txt"))
            assert res.returncode == 0, res.stderr
        for name in ("target.txt", "later.com", "later.exe"):
            res = as_user(READER_UID, "cat", str(mnt / name))
            assert res.returncode == 0, res.stderr

        # De-duplicated by (uid, command), with a count and first/last times.
        [row] = [r for r in journal_rows(mnt) if r["path"] == "gone.txt"]
        assert _who(row["exposures"]) == {(READER_UID, "cat"): 2, (WRITER_UID, "cat"): 1}
        first = next(x for x in row["exposures"] if x["uid"] == READER_UID)
        assert first["first"] <= first["last"]

        os.unlink(mnt / "gone.txt")  # before the drain
        (mnt / "new.txt").write_text("replacement\n")
        os.rename(mnt / "new.txt", mnt / "target.txt")  # rename onto

        # The appliance returns with the drain paused: the close scans find EICAR.
        assert cli("drain", str(mnt), "pause").returncode == 0
        app.set_fault("none")
        wait_until(lambda: status(mnt)["appliances"][0]["healthy"], "the appliance is back")
        for name in ("later.com", "later.exe"):
            res = as_user(WRITER_UID, "cp", str(eicar), str(mnt / name))
            assert res.returncode == 0, res.stderr
        wait_until(lambda: status(mnt)["journal"]["quarantined"] == 1, "later.com quarantined")
        wait_until(hook_out.exists, "the hook ran")
        assert cli("drain", str(mnt), "resume").returncode == 0
        wait_until(lambda: status(mnt)["journal"]["deferred"] == 0, "the journal drained")

        kept = _exposures(mnt)
        assert kept["gone.txt"]["outcome"] == "unlinked"
        assert _who(kept["gone.txt"]["exposures"]) == {(READER_UID, "cat"): 2,
                                                       (WRITER_UID, "cat"): 1}
        assert kept["target.txt"]["outcome"] == "overwritten"
        assert (READER_UID, "cat") in _who(kept["target.txt"]["exposures"])
        for name in ("later.com", "later.exe"):
            assert kept[name]["outcome"] == "infected", kept[name]
            assert (READER_UID, "cat") in _who(kept[name]["exposures"])

        # In the quarantine record and the hook's environment.
        res = cli("quarantine", "list", "--mount", str(mnt), "--json")
        [rec] = json.loads(res.stdout)
        res = cli("quarantine", "show", rec["id"], "--mount", str(mnt), "--json")
        assert res.returncode == 0, res.stderr
        assert (READER_UID, "cat") in _who(json.loads(res.stdout)["exposures"])
        assert (READER_UID, "cat") in _who(json.loads(hook_out.read_text()))
        # Restored (without --to) into the live mount's source, at its place.
        res = cli("quarantine", "restore", rec["id"], "--mount", str(mnt))
        assert res.returncode == 0 and f"to {src / 'later.com'}" in res.stdout, res.stderr
        assert (src / "later.com").read_bytes() == EICAR

        # Kept until an administrator clears it.
        res = cli("journal", "exposures", "--mount", str(mnt), "--clear", "gone.txt")
        assert res.returncode == 0 and "1 cleared" in res.stdout, (res.stdout, res.stderr)
        assert set(_exposures(mnt)) == {"target.txt", "later.com", "later.exe"}
        res = cli("journal", "exposures", "--mount", str(mnt), "--clear-all")
        assert res.returncode == 0 and "3 cleared" in res.stdout, (res.stdout, res.stderr)
        assert _exposures(mnt) == {}

    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    kept_lines = {(x["path"], x.get("outcome")) for x in lines if x["event"] == "exposures"}
    assert {("gone.txt", "unlinked"), ("target.txt", "overwritten")} <= kept_lines
    infected = [x for x in lines if x["event"] == "verdict" and x.get("verdict") == "infected"]
    assert {x["path"] for x in infected} == {"later.com", "later.exe"}
    for x in infected:
        assert (READER_UID, "cat") in _who(x["exposures"])
