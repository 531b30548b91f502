"""A writer's intent and its file's entry survive every name operation on another name
of the file (loss21: the round-6 hole of tests/t5_queued_race_stress_test.py).

- A rename onto one name of a file with two names (a hard link) took that name away
  like an unlink does, but unlike `unlink` nothing moved the file's intent and entry
  to its surviving name: the intent was dropped with the name while the writer still
  held the file, the drain then scanned the file at the other name (a link's entry)
  with the writer's bytes not yet there and removed the entry, and the writer's later
  bytes had neither entry nor verdict.
- A file written through two of its names has an intent under each; its last close
  ended only the one under the name the close came by, and the other stayed pending
  forever (the drain answered "still being written" until it poisoned the entry).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lifecycle import Tree, tree_config, wait_until
from mounting import mounted
from outage import running_appliance, signature_version, status, unaccounted
from queuedrace import DEADLINE, settled

from vfile.journal import Journal

pytestmark = pytest.mark.mount

SAFE = '[[profile]]\nname = "default"\nfail_mode = "safe"\n'


def _attempts(state: Path, name: str) -> int | None:
    """The drain's attempts on `name`'s entry (None: no entry)."""
    with Journal.open(state, readonly=True) as j:
        e = j.get_deferred(name)
        return None if e is None else e.attempts


def _settled(mnt: Path) -> None:
    try:
        wait_until(lambda: settled(mnt), "every intent ended", DEADLINE)
    except AssertionError:
        raise AssertionError(f"still pending: {status(mnt)['gate']}") from None


def test_rename_onto_a_linked_name_keeps_the_writers_intent(tree: Tree) -> None:
    mnt, state = tree.mountpoint, tree.state
    with running_appliance() as app:
        conf = tree_config(tree, app, SAFE)
        with mounted(tree.source, mnt, "--config", str(conf)):
            (mnt / "z").write_bytes(b"the file renamed over a\n")
            fd = os.open(mnt / "a", os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                os.write(fd, b"first bytes\n")
                os.link(mnt / "a", mnt / "b")  # b: the link's entry, for the drain
                os.rename(mnt / "z", mnt / "a")  # a now names z: the file lives on as b
                before = _attempts(state, "b")
                # The drain has looked at b (scanned it, or found it still being written).
                wait_until(lambda: before is None or _attempts(state, "b") != before,
                           "the drain looked at b", DEADLINE)
                os.write(fd, b"more bytes, written after the drain looked\n")
            finally:
                os.close(fd)
            _settled(mnt)
            wait_until(lambda: signature_version(state), "the signature version")
            sig = signature_version(state)
            assert (tree.source / "b").read_bytes().startswith(b"first bytes\n")
            assert unaccounted(tree.source, state, sig) == []


def test_last_close_ends_the_intents_under_both_names(tree: Tree) -> None:
    mnt, state = tree.mountpoint, tree.state
    with running_appliance() as app:
        conf = tree_config(tree, app, SAFE)
        with mounted(tree.source, mnt, "--config", str(conf)):
            first = os.open(mnt / "a", os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                os.write(first, b"written through a\n")
                os.link(mnt / "a", mnt / "b")
                second = os.open(mnt / "b", os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(second, b"written through b\n")
                finally:
                    os.close(second)
                os.write(first, b"and through a again\n")
            finally:
                os.close(first)
            _settled(mnt)
            wait_until(lambda: signature_version(state), "the signature version")
            assert unaccounted(tree.source, state, signature_version(state)) == []
