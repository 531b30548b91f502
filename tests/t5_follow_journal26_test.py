"""A metadata change whose journaling fails after the change was made (u26).

`Keeping._follow` journals a file again after a chmod, chown or utimens when its
verdict cannot follow it (none for the identity before, the file already has an
entry): a scan that judged the file before the change and whose completion is still
to come (a close scan waiting for its intent's commit, the drain's lingering
completions) would otherwise resolve that entry with a verdict for the identity
before, and the file would have neither. That record is written AFTER the change;
when the state disk refused it (full), the JournalError left the handler: the chmod
answered EIO though it was made (the server logged a traceback), and once the scan's
completion removed the entry the file had neither entry nor verdict.

Through a real mount, the state directory on `tests/cutfs.py`: files written, their
entries committed, their close scans' verdicts held back 3 s after the scan (a server
patch: the window made certain); meanwhile every write to the state disk fails with
ENOSPC (`write_fault`) while each file is chmodded, then the disk takes writes again.
Every chmod must succeed and every file end with an entry or a clean verdict for what
it is (before the fix: 4 of 4 chmods EIO, 4 of 4 files with neither). Two neighbours on
the same disk: a record refused before the change (EIO, nothing changed, no traceback)
and an unlink whose entry cannot move to the file's surviving name.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cutfs import write_fault
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import deferred_paths, running_appliance, signature_version, unaccounted
from powercut import cut_dirs
from queuedrace import DEADLINE, wait_settled
from serverpatches import patched
from statedisks import cutfs

pytestmark = pytest.mark.mount

FILES = 4  # (filter.closelimits.CLOSE_SCANS: each holds a slot while it waits)

#: a close scan of `f...` returns its verdict 3 s after it judged the file
LATE_VERDICT = """
    import logging
    import trio
    from vfile.filter import closing

    real = closing.CloseScans._scan

    async def _scan(self, path, *args, **kwargs):
        got = await real(self, path, *args, **kwargs)
        if path.startswith("f"):
            logging.getLogger("vfile").warning("test patch: the verdict of %s waits", path)
            await trio.sleep(3)
        return got

    closing.CloseScans._scan = _scan
"""


def _chmod_all(mnt: Path, names: list[str]) -> list[str]:
    """chmod each file at once (each may wait for its close scan a little); the errors."""
    errors: list[str] = []

    def chmod(n: str) -> None:
        try:
            os.chmod(mnt / n, 0o640)
        except OSError as err:
            errors.append(f"{n}: {err!r}")

    threads = [threading.Thread(target=chmod, args=(n,)) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return errors


def test_chmod_while_the_state_disk_refuses_the_record(tmp_path: Path) -> None:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    tree = Tree(tmp_path, src, mnt, statefs / "state")
    names = [f"f{i}" for i in range(FILES)]
    with running_appliance() as app, cutfs(disk, statefs):
        # An appliance of its own: the embedded engine would judge these files at once.
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(src, mnt, "--config", str(conf),
                     env=patched(tmp_path, LATE_VERDICT)) as server:
            (mnt / "warm").write_bytes(b"warm-up")
            wait_until(lambda: ((mnt / "warm").read_bytes(), signature_version(tree.state))[-1],
                       "the signature version", DEADLINE)
            wait_settled(mnt)
            sig = signature_version(tree.state)
            for n in names:
                (mnt / n).write_bytes(f"clean content of {n}\n".encode())
            wait_until(lambda: set(names) <= set(deferred_paths(tree.state))
                       and server.log().count("test patch: the verdict of") == FILES,
                       "the files' entries committed, their verdicts held", DEADLINE)
            write_fault(disk).touch()
            try:
                errors = _chmod_all(mnt, names)
            finally:
                write_fault(disk).unlink()
            wait_settled(mnt)
            assert all(os.stat(src / n).st_mode & 0o777 == 0o640 for n in names)
            lost = unaccounted(src, tree.state, sig)
            log = server.log()
            assert (errors, lost) == ([], []), log[-3000:]
            # The route was taken: the records were refused by the full disk.
            assert "cannot journal" in log, log[-3000:]


def test_chmod_refused_before_the_change_says_eio_and_changes_nothing(tmp_path: Path
                                                                       ) -> None:
    """A file with neither verdict nor entry is journaled BEFORE its chmod (tier 1): a
    refused record fails the chmod with EIO and the mode stays (before: the same EIO,
    but through the handler's "failed unexpectedly" path, a traceback, as for a bug)."""
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    tree = Tree(tmp_path, src, mnt, statefs / "state")
    (src / "g").write_bytes(b"never scanned\n")
    os.chmod(src / "g", 0o600)
    with running_appliance() as app, cutfs(disk, statefs):
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(src, mnt, "--config", str(conf)) as server:
            wait_settled(mnt)
            write_fault(disk).touch()
            try:
                errors = _chmod_all(mnt, ["g"])
            finally:
                write_fault(disk).unlink()
            assert errors == ["g: OSError(5, 'Input/output error')"]
            assert os.stat(src / "g").st_mode & 0o777 == 0o600
            assert "cannot journal the change of 'g'" in server.log()


def test_unlink_of_a_name_whose_entry_cannot_move_to_the_survivor(tmp_path: Path) -> None:
    """The neighbour: an unlink of one name of a hard-linked file moves that name's entry
    to a surviving name after the unlink (`on_unlink`). Refused by the state disk, the
    unlink answered EIO though the name was gone, and the survivor, changed through the
    gone name and never judged, had neither entry nor verdict (the drain drops an entry
    whose name is gone). Now the unlink succeeds and the survivor is recorded."""
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    tree = Tree(tmp_path, src, mnt, statefs / "state")
    with running_appliance() as app, cutfs(disk, statefs):
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
        with mounted(src, mnt, "--config", str(conf)) as server:
            (mnt / "a").write_bytes(b"judged clean\n")
            assert (mnt / "a").read_bytes() == b"judged clean\n"
            os.link(mnt / "a", mnt / "b")
            wait_settled(mnt)
            wait_until(lambda: deferred_paths(tree.state) == [], "the journal drained",
                       DEADLINE)
            sig = signature_version(tree.state)
            app.set_fault("refuse")  # its change through `a` stays unjudged: an entry at a
            with open(mnt / "a", "r+b") as f:
                f.write(b"changed, unscanned\n")
            wait_settled(mnt)
            assert deferred_paths(tree.state) == ["a"]
            write_fault(disk).touch()
            try:
                errors = []
                try:
                    os.unlink(mnt / "a")
                except OSError as err:
                    errors.append(repr(err))
            finally:
                write_fault(disk).unlink()
            assert not (src / "a").exists()
            wait_until(lambda: "b" in deferred_paths(tree.state), "the survivor recorded",
                       DEADLINE)
            lost = unaccounted(src, tree.state, sig)
            assert (errors, lost) == ([], []), server.log()[-3000:]
            app.set_fault("none")
            wait_settled(mnt)
