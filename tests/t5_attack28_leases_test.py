"""Attack review a28: leases of an earlier run whose wall clock was ahead (the clock then
stepped back: NTP, a corrected RTC, a VM restored), through real mounts.

r27 ended an earlier run's leases at `begin_run`: a lease ending before this run's start
plus one lease was granted before it (journal/queue.py `op_claim`). A run whose clock was
two hours fast granted leases ending two hours past any this run grants: they were taken
for this run's own, and the entries of the batches that run had in flight stayed
unscanned for the two hours and the lease. A lease ends one lease after it was granted,
so one ending later than now plus a lease was granted under a clock ahead of this one:
over as well.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from mounting import mounted, wait_for
from servers import free_port

from vfile import control
from vfile.journal.store import Journal

pytestmark = pytest.mark.mount

#: the earlier run's clock: two hours ahead of the machine's now
AHEAD_S = 7200.0
#: the lease it granted (the drain's, 2 x the longest drain deadline: its default)
LEASE_S = 1260.0


def test_leases_granted_under_a_clock_ahead_end_with_that_run(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    names = [f"f{i}.txt" for i in range(5)]
    for name in names:
        (src / name).write_bytes(b"clean %s\n" % name.encode())
    # Opened while the appliance is unreachable: allowed and journaled (fail mode safe).
    with mounted(src, mnt, "--appliance", f"clamd://127.0.0.1:{free_port()}",
                 "--fail-mode", "safe", "--state-dir", str(state)):
        for name in names:
            assert (mnt / name).read_bytes() == b"clean %s\n" % name.encode()
    # That run's drain, its clock two hours fast, had claimed them when it stopped.
    journal = Journal.open(state, clock=lambda: time.time() + AHEAD_S)
    try:
        claimed = trio.run(lambda: journal.claim(100, lease=LEASE_S))
    finally:
        journal.close()
    assert sorted(e.path for e in claimed) == names
    # The next run (the clock right now), its appliance up: its drain scans them.
    with mounted(src, mnt, "--state-dir", str(state)) as server:
        def left() -> int:
            got: int = control.call(str(mnt), "status", timeout=30)["journal"]["deferred"]
            return got
        wait_for("the drain to scan the entries the earlier run had leased", lambda: left() == 0,
                 60)
        assert all((mnt / name).read_bytes() == b"clean %s\n" % name.encode()
                   for name in names), server.log()[-2000:]
