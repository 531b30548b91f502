"""Attack review x22: an infected action on a name whose file was replaced after the
judgement (vfile/filter/actions.py).

The drain scans an entry's file, then acts on its path: between the two (a scan, a
journal commit, a thread hop) the name can come to hold another file: an editor's
atomic save (a new file renamed over the name), or a user's decoy. The action moved,
renamed (mode 000, a stored infected verdict) or deleted that other file: a clean file
lost or denied for good. The infected file itself is no longer under that name (its
rename changed its ctime, so its next open scans it again: denied). Real files and a
real journal; the swap is done between the judgement and `apply`, which is where the
drain's awaits let it happen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vfile.config.model import InfectedAction
from vfile.filter.actions import Actions
from vfile.journal.records import Identity, VerdictRecord
from vfile.journal.store import Journal


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "src"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    yield path, fd
    os.close(fd)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "state")
    yield j
    j.close()


@pytest.mark.parametrize("action", [InfectedAction.QUARANTINE, InfectedAction.RENAME,
                                    InfectedAction.DELETE])
async def test_an_action_leaves_a_file_saved_over_the_name_alone(
        source: tuple[Path, int], journal: Journal, tmp_path: Path,
        action: InfectedAction) -> None:
    src, fd = source
    (src / "doc").write_bytes(b"infected content")
    judged = VerdictRecord(Identity.from_stat(os.stat(src / "doc")), "sig1", "infected",
                           "Test.Sig", "clamd:///x.sock", 1.0)
    # An atomic save: the new version written beside, renamed over the name.
    (src / "doc.tmp").write_bytes(b"the user's new clean version")
    os.rename(src / "doc.tmp", src / "doc")
    acts = Actions(fd, journal, quarantine_dir=str(tmp_path / "q"))
    said = await acts.apply(action, "doc", judged, profile="p")
    assert (src / "doc").read_bytes() == b"the user's new clean version", said
    assert os.stat(src / "doc").st_mode & 0o777 != 0, said
    assert not (src / "doc.infected").exists(), said
    assert journal.list_quarantine() == [], said
    assert "failed" in said, said
