"""tests/stress_queued_race.py with one seed, in the default suite: threads race
creates, renames, exchanges, links, unlinks and held writers through the mount while
the state disk freezes and thaws; then every file is accounted for, on the live mount
and after a SIGKILL, and no intent stays pending (s23: the last one traced and fixed,
tests/t5_queued_race_names_test.py). More seeds: run that module by name."""

from __future__ import annotations

import pytest
from lifecycle import Tree
from stress_queued_race import race

pytestmark = pytest.mark.mount


def test_racing_name_operations_lose_nothing_seed_1(tree: Tree) -> None:
    race(tree, 1)
