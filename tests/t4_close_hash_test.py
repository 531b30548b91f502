"""Close scans of content already scanned take its verdict by content hash
(vfile.filter.contenthash), through a real mount on the built-in appliance:
the same small content written again is not sent to the appliance, yet gets a
verdict (clean, or infected and acted on); other content is scanned as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from filtering import Filter, assert_quarantined, filtering
from mounting import wait_for
from outage import running_appliance

from vfile.journal import Identity, Journal
from vfile.scanner.signatures import EICAR, EICAR_NAME

pytestmark = pytest.mark.mount


def _write_settled(f: Filter, rel: str, data: bytes) -> None:
    (f.mnt / rel).write_bytes(data)
    wait_for(f"{rel}'s close scan", lambda: f.gate()["pending_intents"] == 0, 30)


def _verdict(f: Filter, rel: str) -> str | None:
    identity = Identity.from_stat((f.src / rel).stat())
    with Journal.open(f.state, readonly=True) as j:
        found = [v for v in j.verdicts() if v.identity == identity]
    return found[0].outcome if found else None


def test_same_content_again_is_judged_by_its_hash(tmp_path: Path) -> None:
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        _write_settled(f, "a.txt", b"the same bytes\n" * 100)
        assert f.gate()["close_scans_by_hash"] == 0
        scans = f.gate()["close_scans"]
        _write_settled(f, "b.txt", b"the same bytes\n" * 100)
        gate = f.gate()
        assert gate["close_scans"] == scans + 1
        assert gate["close_scans_by_hash"] == 1
        wait_for("b.txt's verdict", lambda: _verdict(f, "b.txt") == "clean", 30)
        _write_settled(f, "c.txt", b"other bytes\n" * 100)
        assert f.gate()["close_scans_by_hash"] == 1
        assert _verdict(f, "c.txt") == "clean"

        # An infected content's verdict is reused too, and acted on the same way.
        _write_settled(f, "first.com", EICAR)
        assert_quarantined(f, "first.com", EICAR, EICAR_NAME)
        _write_settled(f, "again.com", EICAR)
        assert f.gate()["close_scans_by_hash"] == 2
        assert_quarantined(f, "again.com", EICAR, EICAR_NAME)
