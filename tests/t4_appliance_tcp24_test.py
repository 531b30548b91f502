"""An appliance on a local TCP port served by another user is not believed (x24).

x23 made a unix appliance prove who serves it (SO_PEERCRED); a TCP address was
believed whoever answered. On a loopback port, any user can bind it while the real
appliance is down or restarting, and then received every scanned file's content
(INSTREAM: a root-only file's bytes included) and had their verdicts believed (a
closed-mode mount served root's 0600 file after that user's appliance called it
clean). The client now finds the owner of the peer's socket in /proc/net/tcp{,6}
(matched by both ends of the connection, else the listener on the port): root or
vfile's own user, else an appliance error and the fail mode applies. Remote
addresses: the network must be trusted (README, Operations)."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from mounting import mounted
from otheruser import appliance_serving, closed_tree

pytestmark = pytest.mark.mount

def _own_addresses() -> list[str]:
    """This machine's own non-loopback addresses (r25: local, though not loopback)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    return [f"[{a}]" if ":" in a else a for a in out.stdout.split()[:2]]


# r25: 127.0.0.2 (all of 127/8 is loopback), an IPv4-mapped IPv6 address, and this
# machine's own addresses (found by sock_diag though not loopback).
@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "127.0.0.2", "[::ffff:127.0.0.1]",
                                  *_own_addresses()])
def test_a_local_port_served_by_another_user_is_not_believed(tmp_path: Path,
                                                             host: str) -> None:
    src, mnt, conf = closed_tree(tmp_path)
    with appliance_serving(f"tcp://{host}:0") as url, \
            mounted(src, mnt, "--state-dir", str(tmp_path / "state"), "--config", str(conf),
                    "--appliance", url.replace("tcp://", "clamd://")) as server:
        with pytest.raises(OSError) as err:
            (mnt / "secret").read_bytes()  # scanned by that user's appliance
        assert err.value.errno == errno.EACCES
        assert "served by uid 1001" in server.log(), server.log()[-3000:]


def test_a_local_port_served_by_us_is_used(tmp_path: Path) -> None:
    src, mnt, conf = closed_tree(tmp_path)
    with appliance_serving("tcp://127.0.0.1:0", uid=None) as url, \
            mounted(src, mnt, "--state-dir", str(tmp_path / "state"), "--config", str(conf),
                    "--appliance", url.replace("tcp://", "clamd://")):
        assert (mnt / "secret").read_bytes() == b"root's secret\n"
