"""Engines that skip silently, through a real mount with the real clamd and c-icap.

A file larger than the engine's size limits is not scanned by it. clamd says
so only with `AlertExceedsMax yes` (as a `Heuristics.Limits.Exceeded.*`
"signature"); c-icap answers 204 right after the preview, before it has seen
the rest of the file. Either is an error (no verdict: the fail mode applies,
here `safe`: journaled), never clean and never an infection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mounting import mounted
from outage import write_config
from servers import make_samples, running_cicap, running_clamd

from vfile import control
from vfile.scanner.signatures import EICAR

pytestmark = [pytest.mark.mount, pytest.mark.clamd]

LIMITS = "MaxFileSize 1M\nMaxScanSize 1M\nAlertExceedsMax yes\n"


def _deferred(mnt: Path) -> dict[str, dict[str, object]]:
    rows: list[dict[str, object]] = control.call(mnt, "journal.list", {},
                                                 timeout=20)["entries"]
    return {str(r["path"]): r for r in rows}


@pytest.mark.parametrize("engine", ["clamd", "icap"])
def test_over_the_engines_size_limit_is_no_verdict(tmp_path: Path, engine: str) -> None:
    samples = make_samples(tmp_path / "samples")
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    (src / "big.bin").write_bytes(EICAR + b"\0" * (2 << 20))  # over the 1M limits
    (src / "small.com").write_bytes(EICAR)  # under them: still found
    cfg = write_config(tmp_path / "vfile.toml", deadline=10,
                       extra_profile='infected_action = "deny"\n')
    with running_clamd(tmp_path / "clamd", samples.sigdir, extra=LIMITS) as clamd, \
            running_cicap(clamd.socket_path, tmp_path / "cicap", max_object="1M") as cicap:
        url = clamd.unix_url if engine == "clamd" else cicap.url
        with mounted(src, mnt, "--appliance", url, "--config", str(cfg),
                     "--state-dir", str(state)):
            with pytest.raises(PermissionError):
                (mnt / "small.com").read_bytes()
            # No verdict: allowed (fail-safe) and journaled with the engine's reason.
            assert (mnt / "big.bin").read_bytes()[:len(EICAR)] == EICAR
            rows = _deferred(mnt)
            assert "big.bin" in rows, json.dumps(rows)
            assert "limit" in str(rows["big.bin"]["last_error"]), rows["big.bin"]
