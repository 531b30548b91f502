"""Attack on close-scan verdicts reused by content hash (vfile.filter.contenthash): a
clean verdict is reused only under the signature version that gave it.

The close scan looks up and remembers under the version the mount names current
when it starts. A scan answered by another appliance of the pool (a failover to
one with older signatures) gives a verdict of that appliance's version; remembered
under the current one, every later file with those bytes took a clean verdict of
the older signatures while the current ones were there to ask, for as long as the
entry lived. (Infected stands under any version, as in the fleet cache.)
"""

from __future__ import annotations

import os
from pathlib import Path

from vfile.filter.contenthash import ContentVerdicts, Looked
from vfile.journal.records import Identity
from vfile.scanner.verdict import Verdict


def _looked(tmp_path: Path, hashes: ContentVerdicts, sig: str, data: bytes = b"same bytes\n"
            ) -> Looked:
    path = tmp_path / f"f{len(os.listdir(tmp_path))}"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return hashes.lookup(fd, Identity.from_stat(os.fstat(fd)), sig)
    finally:
        os.close(fd)


def test_a_clean_verdict_of_older_signatures_is_not_reused_as_current(tmp_path: Path) -> None:
    hashes = ContentVerdicts()
    looked = _looked(tmp_path, hashes, "v2")
    hashes.remember(looked, "v2", Verdict.clean("clamd://secondary", "v1"))
    again = _looked(tmp_path, hashes, "v2")
    assert again.verdict is None, again
    # A verdict of the current version is reused.
    hashes.remember(again, "v2", Verdict.clean("clamd://primary", "v2"))
    third = _looked(tmp_path, hashes, "v2")
    assert third.verdict == Verdict.clean("clamd://primary", "v2")


def test_an_infected_verdict_stands_under_any_version(tmp_path: Path) -> None:
    hashes = ContentVerdicts()
    looked = _looked(tmp_path, hashes, "v2", b"X5O!bad\n")
    hashes.remember(looked, "v2", Verdict.infected("Bad.Sig", "clamd://secondary", "v1"))
    again = _looked(tmp_path, hashes, "v2", b"X5O!bad\n")
    assert again.verdict is not None and again.verdict.is_infected
