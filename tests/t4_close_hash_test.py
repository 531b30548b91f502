"""Close scans of content already scanned take its verdict by content hash
(vfile.filter.contenthash), through a real mount on the built-in appliance:
the same small content written again is not sent to the appliance, yet gets a
verdict (clean, or infected and acted on); other content is scanned as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from filtering import assert_quarantined, filtering, stored_verdict, write_settled
from mounting import wait_for
from outage import running_appliance

from vfile.scanner.signatures import EICAR, EICAR_NAME

pytestmark = pytest.mark.mount


def test_same_content_again_is_judged_by_its_hash(tmp_path: Path) -> None:
    with running_appliance() as app, filtering(tmp_path, "--appliance", app.url) as f:
        write_settled(f, "a.txt", b"the same bytes\n" * 100)
        assert f.gate()["close_scans_by_hash"] == 0
        scans = f.gate()["close_scans"]
        write_settled(f, "b.txt", b"the same bytes\n" * 100)
        gate = f.gate()
        assert gate["close_scans"] == scans + 1
        assert gate["close_scans_by_hash"] == 1
        wait_for("b.txt's verdict", lambda: stored_verdict(f, "b.txt") == "clean", 30)
        write_settled(f, "c.txt", b"other bytes\n" * 100)
        assert f.gate()["close_scans_by_hash"] == 1
        assert stored_verdict(f, "c.txt") == "clean"

        # An infected content's verdict is reused too, and acted on the same way.
        write_settled(f, "first.com", EICAR)
        assert_quarantined(f, "first.com", EICAR, EICAR_NAME)
        write_settled(f, "again.com", EICAR)
        assert f.gate()["close_scans_by_hash"] == 2
        assert_quarantined(f, "again.com", EICAR, EICAR_NAME)
