"""A short soak (bench/soak.py): no descriptor growth in the mount server, no file lost.

About 40 s of mixed workload through a mount with two outages and two
quiesce windows. The mount server holds one O_PATH descriptor per inode the
kernel knows, so after the workload settles its descriptors may exceed the
first sample by at most the workload's file set plus a small slack; a leak
of one descriptor per operation would be thousands. Every file in the source
must end journaled or with a clean verdict for its current identity.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
FILES = 40  # bench/soak.py's file set
SLACK = 16


def test_short_soak_keeps_fds_flat_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), "--minutes", "0.6", "--interval", "1",
                           "--period", "9", "--json", str(out)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    print({k: v for k, v in result.items() if k != "samples"})
    assert result["lost"] == [], "files neither journaled nor scanned clean"
    assert result["workload_errors"] == []
    assert result["outages"] >= 2 and result["windows"] >= 1
    assert result["ops"] > 100 and result["opens"] > 100
    assert result["journal_max"] > 0, "the outages never reached the journal"
    assert result["fd_end"] <= result["fd_start"] + FILES + SLACK, result["samples"]
    assert len(result["samples"]) >= 20
