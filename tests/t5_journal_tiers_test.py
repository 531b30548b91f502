"""The journal's durability tiers through a real mount (README "Durability of journal
records"):

- tier 2: the record of an unscanned read is committed, not fsynced, before the
  open returns; a SIGKILL of the server right after the open keeps it;
- tier 3: a state disk that takes no writes (frozen with `fsfreeze`, as a guest
  agent does during a migration) blocks no open past the profile's deadline,
  stalls no cached open and no control-plane command; the records made meanwhile
  are kept in memory and are in the journal once the disk thaws.

The state directory, the audit log and the server's log file live on a small
loop-mounted ext4, always thawed and unmounted in `finally`.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from lifecycle import Tree, cli, journal_rows, tree_config, wait_until
from mounting import mounted
from outage import running_appliance
from statedisks import durability, frozen, loop_ext4, opens_within, status_json

from vfile.journal import Journal

pytestmark = pytest.mark.mount

DEADLINE = 1.0
#: how long the disk stays frozen at most; everything asserted "during" happens before
FROZEN_FOR = 30.0


def test_sigkill_after_an_unscanned_read_keeps_its_record(tree: Tree) -> None:
    """Tier 2: with no background fsync at all (`sync_interval` 1 h), a window's
    unscanned reads are in the journal after a SIGKILL, although never fsynced."""
    names = [f"r{i}.txt" for i in range(20)]
    for n in names:
        (tree.source / n).write_text(f"read me {n}\n")
    with running_appliance() as app:
        conf = tree_config(tree, app, '[journal]\nsync_interval = "1h"\n')
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)) as server:
            res = cli("quiesce", str(tree.mountpoint))
            assert res.returncode == 0, res.stderr
            fsyncs = durability(tree.mountpoint)["fsyncs"]
            for n in names:
                assert (tree.mountpoint / n).read_text() == f"read me {n}\n"
            d = durability(tree.mountpoint)
            assert d["fsyncs"] == fsyncs, "a tier-2 record was fsynced on the open path"
            assert d["unsynced_commits"] >= 1
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
    with Journal.open(tree.state, readonly=True) as j:
        paths = sorted(e.path for e in j.list_deferred())
    assert paths == sorted(names)


def test_frozen_state_disk_blocks_no_open(tree: Tree) -> None:
    """Tier 3: state directory, audit log and server log on a frozen ext4, in a window:
    unscanned opens return within about the deadline, cached opens and `vfile status`
    do not stall; after the thaw the records are in the journal, and a SIGKILL then
    keeps them."""
    warm = [f"warm{i}.txt" for i in range(10)]
    cold = [f"cold{i}.txt" for i in range(10)]
    for n in warm + cold:
        (tree.source / n).write_text(f"content of {n}\n")
    with running_appliance() as app, loop_ext4(tree.root) as fs:
        state = fs / "state"
        conf = tree_config(tree, app, '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                                       f'deadline = "{DEADLINE}s"\n')
        conf.write_text(conf.read_text().replace(str(tree.state), str(state)))
        with mounted(tree.source, tree.mountpoint, "--config", str(conf), "-v",
                     "--audit-log", str(fs / "audit.jsonl"),
                     log_path=fs / "server.log") as server:
            wait_until(lambda: status_json(tree.mountpoint)["appliances"][0]["healthy"],  # type: ignore[index]
                       "the appliance is healthy")
            for n in warm:  # scanned now: clean verdicts, cached
                (tree.mountpoint / n).read_bytes()
            res = cli("quiesce", str(tree.mountpoint))
            assert res.returncode == 0, res.stderr
            with frozen(fs):
                frozen_at = time.monotonic()
                cached = opens_within([tree.mountpoint / n for n in warm], 10.0)
                unscanned = opens_within([tree.mountpoint / n for n in cold], 10.0)
                st = status_json(tree.mountpoint)
                still_frozen = time.monotonic() - frozen_at < FROZEN_FOR
            assert still_frozen
            assert None not in cached.values(), f"cached opens stalled: {cached}"
            assert None not in unscanned.values(), f"unscanned opens stalled: {unscanned}"
            # Generous: the deadline plus scheduling on a loaded machine.
            assert max(v for v in unscanned.values() if v is not None) < DEADLINE + 8
            journal = st["journal"]
            assert isinstance(journal, dict)
            assert journal["durability"]["held_in_memory"] >= 1, journal

            # Thawed: the held records reach the journal; nothing was lost.
            wait_until(lambda: durability(tree.mountpoint)["held_in_memory"] == 0,
                       "the held records are written")
            assert durability(tree.mountpoint)["held_lost"] == 0
            assert sorted(r["path"] for r in journal_rows(tree.mountpoint)) == sorted(cold)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
        with Journal.open(state, readonly=True) as j:
            assert sorted(e.path for e in j.list_deferred()) == sorted(cold)
        audit = (fs / "audit.jsonl").read_text().splitlines()
        assert {json.loads(x)["path"] for x in audit if '"unscanned"' in x} == set(cold)
        os.sync()
