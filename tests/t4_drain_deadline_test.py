"""The drain's own deadline, through a real mount.

Files deferred during an outage take longer to scan than the on-open
deadline once the appliance is back (it holds every scan reply back, as a
large file or a deep archive would, while answering PING and VERSION at
once). The drain scans them under its own deadline, and its slow scans are
not counted as failures against the appliance's circuit breaker: the
appliance stays available to on-open traffic.
"""

from __future__ import annotations

import pytest
from lifecycle import Tree, drained, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, status

pytestmark = pytest.mark.mount

SLOW = 2.5  # seconds per scan: longer than the on-open deadline, far below the drain's


def test_slow_scans_drain_under_their_own_deadline(tree: Tree) -> None:
    for i in range(4):
        (tree.source / f"big{i}.bin").write_bytes(bytes([i]) * 4096)
    body = ('[[profile]]\nname = "default"\ndeadline = "1s"\nattempt_timeout = "1s"\n'
            'drain_deadline = "60s"\n')
    with running_appliance(fault="refuse") as app, \
            mounted(tree.source, tree.mountpoint,
                    "--config", str(tree_config(tree, app, body))):
        for i in range(4):  # the outage: allowed, journaled
            assert (tree.mountpoint / f"big{i}.bin").read_bytes() == bytes([i]) * 4096
        assert status(tree.mountpoint)["journal"]["deferred"] == 4
        app.set_fault(f"slowscan={SLOW}s")
        wait_until(lambda: drained(tree.mountpoint),
                   "the slow files drained", deadline=90)
        st = status(tree.mountpoint)
        assert st["drain"]["done"]["clean"] == 4
        [appliance] = st["appliances"]
        assert appliance["state"] == "closed" and appliance["healthy"], appliance
