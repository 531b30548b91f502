"""The surviving name of a hard-linked file keeps its verdict durably (g24, rs24's gaps).

Taking one name from a file with two (an unlink, a rename onto it) gives the file a
new ctime; `on_name_dropped` stores the verdict for that new identity (tier 2), but only
after several awaits (the survivor's search, which may walk the source; the durable
journal move of the name). If those take longer than the watermark's margin while the
background sync runs, the durable watermark W passed the survivor's new ctime before
its verdict existed: a power cut then left the file with neither (the recovery walk does
not look below W). Slow awaits are made certain by a server patch (a 5 s sleep before
`Keeping.name_dropped` does anything), commits by a file written every 0.2 s meanwhile.

And a kept verdict whose transaction fails (a failing state disk: a patched
`put_verdict`) left the file with neither until something opened it; it falls back to
a record now, so the file has an entry.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from lifecycle import Tree, wait_until
from mounting import mounted
from outage import (
    deferred_paths,
    restarted_with_walk,
    signature_version,
    unaccounted,
    verdict_outcome,
    write_config,
)
from powercut import cut_dirs, learn_signature
from queuedrace import DEADLINE, wait_settled
from serverpatches import patched
from statedisks import cutfs

pytestmark = pytest.mark.mount

#: the awaits before the survivor's kept verdict take 5 s (margin 2 s, sync every 1 s)
SLOW = """
    import logging
    import trio
    from vfile.filter import keeping

    real = keeping.Keeping.name_dropped

    async def name_dropped(self, survivor, *args, **kwargs):
        if survivor == b"b":
            logging.getLogger("vfile").warning("test patch: name_dropped of b sleeps 5 s")
            await trio.sleep(5)
        return await real(self, survivor, *args, **kwargs)

    keeping.Keeping.name_dropped = name_dropped
"""

#: every kept verdict's transaction fails once the file `fail-verdicts` exists beside
#: the patch (a state disk that takes no more writes, for that one transaction)
FAILING = """
    import logging
    import os
    from vfile.journal import store
    from vfile.journal.records import JournalError

    real = store.Journal.put_verdict
    flag = os.path.join(os.path.dirname(os.environ["VFILE_TEST_PATCH"]), "fail-verdicts")

    async def put_verdict(self, verdict):
        if os.path.exists(flag):
            logging.getLogger("vfile").warning("test patch: put_verdict fails")
            raise JournalError("test patch: the state disk takes no more writes")
        return await real(self, verdict)

    store.Journal.put_verdict = put_verdict
"""


def _two_names(mnt: Path, state: Path, source: Path, sig: str) -> None:
    """z, and a file named a and b, judged clean, the journal drained."""
    (mnt / "z").write_bytes(b"another file\n")
    (mnt / "a").write_bytes(b"a file with two names\n")
    os.link(mnt / "a", mnt / "b")
    wait_settled(mnt)
    wait_until(lambda: deferred_paths(state) == [], "the drain emptied the journal", DEADLINE)
    assert verdict_outcome(state, source, "b", sig) == "clean"


def _drop_name(mnt: Path, how: str) -> None:
    if how == "unlink":
        os.unlink(mnt / "a")
    else:
        os.rename(mnt / "z", mnt / "a")


@pytest.mark.parametrize("how", ["unlink", "rename_over"])
def test_a_slow_survivor_then_a_power_cut_leaves_it_accounted(tmp_path: Path,
                                                               how: str) -> None:
    src, mnt, disk, statefs = cut_dirs(tmp_path)
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    state = statefs / "state"
    # Without the writeback cache: its SETATTR of the kernel's own ctime would journal b.
    args = ("--config", str(cfg), "--state-dir", str(state), "-o", "no_writeback")
    (src / "warm").write_bytes(b"warm-up")
    with cutfs(disk, statefs):
        sig = learn_signature(src, mnt, state, args, ["warm"])
        with mounted(src, mnt, *args, env=patched(tmp_path, SLOW)) as server:
            _two_names(mnt, state, src, sig)
            ctime = os.stat(src / "b").st_ctime_ns
            stop = threading.Event()

            def commits() -> None:  # the background sync advances W only after commits
                i = 0
                while not stop.is_set():
                    try:
                        (mnt / f"tick{i}").write_bytes(b"tick %d\n" % i)
                    except OSError:
                        return  # the server was killed
                    i += 1
                    time.sleep(0.2)

            ticker = threading.Thread(target=commits)
            ticker.start()
            try:
                _drop_name(mnt, how)  # 5 s
                server.proc.kill()  # at once: b's kept verdict is committed, not fsynced
            finally:
                stop.set()
                ticker.join(30)
            server.proc.wait(30)
            assert "name_dropped of b sleeps" in server.log()
        assert os.stat(src / "b").st_ctime_ns != ctime
    with cutfs(disk, statefs):
        lost = unaccounted(src, state, sig)
        assert lost, "the cut took nothing away: this run shows nothing"
        restarted_with_walk(src, mnt, state, sig, *args)


@pytest.mark.parametrize("how", ["unlink", "rename_over"])
def test_a_kept_verdict_that_cannot_be_stored_leaves_a_record(tree: Tree, how: str) -> None:
    mnt, state = tree.mountpoint, tree.state
    conf = tree.root / "vfile.toml"  # the embedded engine
    conf.write_text(f'[mount]\nstate_dir = "{state}"\n'
                    f'quarantine_dir = "{tree.root / "quarantine"}"\n'
                    '[[profile]]\nname = "default"\nfail_mode = "safe"\n')
    env = patched(tree.root, FAILING)
    with mounted(tree.source, mnt, "--config", str(conf), "-o", "no_writeback",
                 env=env) as server:
        (mnt / "warm").write_bytes(b"warm-up")
        wait_until(lambda: signature_version(state), "the signature version")
        sig = signature_version(state)
        _two_names(mnt, state, tree.source, sig)
        (tree.root / "fail-verdicts").touch()
        _drop_name(mnt, how)
        wait_settled(mnt)
        (tree.root / "fail-verdicts").unlink()
        assert "put_verdict fails" in server.log()
        # Its record, or the verdict the drain then stored after scanning it.
        wait_until(lambda: unaccounted(tree.source, state, sig) == [],
                   "b has an entry or a verdict", DEADLINE)
