"""Crash-test writer: defers and completes journal entries until it is killed.

    python tests/journal_writer.py STATE_DIR SEED

Many trio tasks defer paths from a shared pool (so entries are re-deferred)
and complete some of them with a verdict whose identity encodes (path number,
seq). Each operation is printed to stdout -- `D <n> <seq>` after a defer,
`C <n> <seq> <removed>` after a completion -- only once its `await` returned,
i.e. once the journal acknowledged it as durable. `READY` is printed once the
journal is open. t5_journal_crash_test.py SIGKILLs this process at random
points and checks the journal against what was printed.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from vfile.journal import Identity, Journal, Reason, VerdictRecord

TASKS = 64
PATHS = 400


def path_of(n: int) -> str:
    return f"/crash/{n:04d}/" + "x" * (n % 7) * 40  # some long paths too


def verdict_identity(n: int, seq: int) -> Identity:
    return Identity(dev=7, ino=n, size=seq, mtime_ns=0, ctime_ns=0)


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # unbuffered: printed means acknowledged


async def worker(journal: Journal, rng: random.Random) -> None:
    while True:
        n = rng.randrange(PATHS)
        seq = await journal.defer(path_of(n), Identity(7, n, rng.randrange(10), 0, 0),
                                  Reason.UNAVAILABLE, "crash")
        say(f"D {n} {seq}")
        if rng.random() < 0.4:
            verdict = VerdictRecord(verdict_identity(n, seq), "1", "clean", "", "test", 0.0)
            removed = await journal.complete(path_of(n), seq, verdict)
            say(f"C {n} {seq} {int(removed)}")


async def main(state_dir: str, seed: int) -> None:
    journal = Journal.open(state_dir)
    say("READY")
    async with trio.open_nursery() as nursery:
        for i in range(TASKS):
            nursery.start_soon(worker, journal, random.Random(seed * 1000 + i))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
