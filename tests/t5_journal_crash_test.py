"""Crash safety: SIGKILL a journal writer at random points, reopen, check every ack.

The writer (tests/journal_writer.py) prints each defer and completion once
its await returned. After each kill the journal must open cleanly, its order
index must match its entries, and for every path:
- the entry, if present, carries a seq >= the last acknowledged defer's seq,
  and no acknowledged removing completion has that seq;
- if absent, a completion removed it: there is a verdict for the completed
  (path, seq) with seq >= the last acknowledged defer's seq (the completion
  itself may have been durable without being acknowledged).
The same journal is reused across kills, so state accumulates.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from journal_writer import path_of  # tests/ is on sys.path (rootdir conftest)

from vfile.journal import Journal

WRITER = Path(__file__).with_name("journal_writer.py")
KILLS = 24
SEED = 20240604


def _run_and_kill(state: Path, seed: int, delay: float) -> list[str]:
    proc = subprocess.Popen([sys.executable, str(WRITER), str(state), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"READY\n", first + proc.stderr.read() if proc.stderr else b""
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    return out.decode().splitlines()


def _check(state: Path, last_defer: dict[int, int], removed_acks: set[tuple[int, int]]) -> int:
    j = Journal.open(state)  # must open cleanly, read-write, after every kill
    try:
        # The indexes and counters agree with the entries; no path has two entries.
        assert j.check() == []
        entries = j.list_deferred()
        verdicts = j.verdicts()
    finally:
        j.close()
    by_path = {e.path: e for e in entries}
    completed: dict[int, int] = {}
    for v in verdicts:
        completed[v.identity.ino] = max(completed.get(v.identity.ino, 0), v.identity.size)
    for n, seq in last_defer.items():
        entry = by_path.get(path_of(n))
        if entry is not None:
            assert entry.seq >= seq, (n, entry.seq, seq)
            assert (n, entry.seq) not in removed_acks, (n, entry.seq)
        else:
            assert completed.get(n, 0) >= seq, (n, seq, completed.get(n))
    return len(entries)


def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    state = tmp_path / "state"
    last_defer: dict[int, int] = {}
    removed_acks: set[tuple[int, int]] = set()
    acks = 0
    for kill in range(KILLS):
        lines = _run_and_kill(state, seed=SEED + kill, delay=rng.uniform(0.02, 0.4))
        for line in lines:
            parts = line.split()
            if not parts or (parts[0] == "C" and len(parts) < 4) or len(parts) < 3:
                continue  # a line cut by the kill was never a complete acknowledgement
            n, seq = int(parts[1]), int(parts[2])
            if parts[0] == "D":
                last_defer[n] = max(last_defer.get(n, 0), seq)
                acks += 1
            elif parts[0] == "C" and parts[3] == "1":
                removed_acks.add((n, seq))
                acks += 1
        _check(state, last_defer, removed_acks)
    assert acks > 1000, "the writer barely ran: the test proves little"
