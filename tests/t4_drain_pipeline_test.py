"""The drain's pipelined batches, through a real mount (issue 20).

The drain sends a batch of FILDES requests on one session connection before
it reads any reply (vfile.filter.resolution, scanner/clamd_session.py). When
the appliance goes away in the middle of a batch (some replies read, the rest
never coming: a killed clamd closes its connections, as the built-in
appliance does when `refuse` is set), no file of that batch may be settled
on a reply that was not its own: the batch fails as a whole and every entry
is retried once the appliance is back. Infected files among clean ones must
all end up infected, the clean ones clean, and nothing stays deferred. (Health
probes are made rare here, so that the lost connection, not a failed probe
cutting the batch short, is what the drain sees.)
"""

from __future__ import annotations

import os
import time

import pytest
from lifecycle import Tree, drained, wait_until
from mounting import mounted
from outage import Proc, running_appliance, status

from vfile import control
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount

CLEAN = 40
INFECTED = 8
#: seconds per scan while the batches are cut: the built-in appliance answers a session's
#: requests in turn, so a batch of 16 is in flight for seconds (no timing is asserted)
SLOW = 0.1


def test_appliance_lost_mid_batch_settles_nothing_on_a_missing_reply(tree: Tree) -> None:
    names = [f"c{i:03d}.bin" for i in range(CLEAN)] + [f"v{i:03d}.com" for i in range(INFECTED)]
    for i, name in enumerate(names):
        # The infected files interleaved with the clean ones: every batch has some.
        (tree.source / name).write_bytes(EICAR if name.startswith("v") else os.urandom(600 + i))
    conf = tree.root / "vfile.toml"
    with running_appliance() as app:
        conf.write_text(f'[mount]\nappliances = ["{app.url}"]\nstate_dir = "{tree.state}"\n'
                        '[pool]\nprobe_interval = "60s"\nattempt_timeout = "5s"\n'
                        '[[profile]]\nname = "default"\nfail_mode = "safe"\ndeadline = "5s"\n'
                        'attempt_timeout = "5s"\ninfected_action = "deny"\n')
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)):
            _cut_mid_batch(tree, app, names)


def _cut_mid_batch(tree: Tree, app: Proc, names: list[str]) -> None:
    """Defer every file, cut the appliance off while a batch is in flight, bring it back:
    every file settled on its own verdict."""
    def ctl(cmd: str, args: dict[str, object] | None = None) -> object:
        return control.call(tree.mountpoint, cmd, args, timeout=60)

    ctl("drain", {"action": "pause"})
    ctl("quiesce", {"max": 600})
    for name in sorted(names, key=lambda n: n[1:]):  # claimed in this order: mixed
        os.close(os.open(tree.mountpoint / name, os.O_RDONLY))
    assert status(tree.mountpoint)["journal"]["deferred"] == CLEAN + INFECTED
    app.set_fault(f"slowscan={SLOW}s")
    ctl("resume")
    ctl("drain", {"action": "resume"})
    wait_until(lambda: status(tree.mountpoint)["drain"]["in_flight"] > 0,
               "a batch is in flight", deadline=60)
    # Some replies read, the rest never to come (the built-in appliance ends its session
    # connections at once on `refuse`). Where the cut lands does not change what is checked.
    time.sleep(SLOW * 5)
    app.set_fault("refuse")
    wait_until(lambda: status(tree.mountpoint)["drain"]["done"]["error"] > 0,
               "the cut batch failed", deadline=60)
    app.set_fault("none")
    # Retried after the journal's back-off (5 s for a first failure).
    wait_until(lambda: drained(tree.mountpoint), "every entry resolved", deadline=120)
    done = status(tree.mountpoint)["drain"]["done"]
    assert done["infected"] == INFECTED, done
    assert done["clean"] == CLEAN, done
    for name in names:  # and the mount agrees, file by file
        path = tree.mountpoint / name
        if name.startswith("v"):
            with pytest.raises(PermissionError):
                path.read_bytes()
        else:
            assert len(path.read_bytes()) >= 600


def test_large_files_drain_alone_among_batches(tree: Tree) -> None:
    """Files over the batch byte limit are scanned one at a time (vfile.filter.drain
    BATCH_BYTES), between batches of small ones, all settled on their own verdicts."""
    names = [f"s{i:02d}.bin" for i in range(20)] + ["big0.bin", "big1.bin", "v.com"]
    for i, name in enumerate(names):
        data = os.urandom(700 + i) if name.startswith("s") else os.urandom(3 << 20)
        (tree.source / name).write_bytes(EICAR if name == "v.com" else data)
    conf = tree.root / "vfile.toml"
    with running_appliance() as app:
        conf.write_text(f'[mount]\nappliances = ["{app.url}"]\nstate_dir = "{tree.state}"\n'
                        '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                        'infected_action = "deny"\nmax_size = 0\n')
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)):
            control.call(tree.mountpoint, "drain", {"action": "pause"}, timeout=60)
            control.call(tree.mountpoint, "quiesce", {"max": 600}, timeout=60)
            for name in names[10:] + names[:10]:  # large ones among the small ones
                os.close(os.open(tree.mountpoint / name, os.O_RDONLY))
            control.call(tree.mountpoint, "resume", timeout=60)
            control.call(tree.mountpoint, "drain", {"action": "resume"}, timeout=60)
            wait_until(lambda: drained(tree.mountpoint), "every entry resolved", deadline=120)
            done = status(tree.mountpoint)["drain"]["done"]
            assert (done["clean"], done["infected"], done["error"]) == (22, 1, 0), done
            with pytest.raises(PermissionError):
                (tree.mountpoint / "v.com").read_bytes()


def test_an_appliance_too_slow_for_a_whole_batch_still_drains(tree: Tree) -> None:
    """The built-in appliance answers a session's requests in turn at 0.2 s each, and the
    profile's drain deadline (2 s) is shorter than a whole batch of 64 takes: the drain
    must shrink its batches rather than fail the same way forever (found reviewing dr21:
    64-file batches, no way down)."""
    names = [f"c{i:03d}.bin" for i in range(40)] + ["v.com"]
    for i, name in enumerate(names):
        (tree.source / name).write_bytes(EICAR if name == "v.com" else os.urandom(600 + i))
    conf = tree.root / "vfile.toml"
    with running_appliance() as app:
        conf.write_text(f'[mount]\nappliances = ["{app.url}"]\nstate_dir = "{tree.state}"\n'
                        '[pool]\nprobe_interval = "60s"\n'
                        '[[profile]]\nname = "default"\nfail_mode = "safe"\n'
                        'drain_deadline = "2s"\ninfected_action = "deny"\n')
        with mounted(tree.source, tree.mountpoint, "--config", str(conf)):
            control.call(tree.mountpoint, "drain", {"action": "pause"}, timeout=60)
            control.call(tree.mountpoint, "quiesce", {"max": 600}, timeout=60)
            for name in names:
                os.close(os.open(tree.mountpoint / name, os.O_RDONLY))
            assert status(tree.mountpoint)["journal"]["deferred"] == len(names)
            app.set_fault("slowscan=0.2s")
            control.call(tree.mountpoint, "resume", timeout=60)
            control.call(tree.mountpoint, "drain", {"action": "resume"}, timeout=60)
            wait_until(lambda: drained(tree.mountpoint), "every entry resolved", deadline=180)
            done = status(tree.mountpoint)["drain"]["done"]
            assert (done["clean"], done["infected"]) == (40, 1), done
