"""A short soak (bench/soak.py): no descriptor or memory growth in the mount server,
no file lost.

About 65 s of mixed workload through a mount with outages and quiesce windows.
The mount server holds one O_PATH descriptor per inode the kernel knows, so
after the workload settles its descriptors may exceed the first sample by at
most the workload's file set plus a small slack; a leak of one descriptor per
operation would be thousands. Every file in the source must end journaled or
with a clean verdict for its current identity.

Memory (issue 19): once the first 40 % of the run has warmed the server up,
the growth of its live Python heap (tracemalloc, which the soak turns on in
the server; measured after a full collection at both ends), per 10,000
operations so that a loaded machine's slower rate does not hide it, must stay
under a generous threshold. Before the fix the verdict cache kept one record
per write: 1,472 KiB per 10,000 operations here (measured); after it, 65.
RssAnon over 40 s is too noisy on a shared 2-core machine to tell a leak from
the allocator warming up (the same run measured 1,733 KiB/min before the fix
and 2,720 after; the 20-minute figures in the README tell them apart), so it
only gets a bound that catches a gross leak outside the heap.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vfile.filter import contenthash

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
FILES = 40  # bench/soak.py's file set
SLACK = 16
#: live heap growth after warm-up, KiB per 10,000 operations (reader opens and writer
#: ops): the code before the fix measured 1,472 on a loaded machine (one verdict record
#: per write), after it 65
MAX_HEAP_GROWTH = 500.0
#: KiB of live-heap growth that is not a leak however few operations a loaded machine
#: fits into the run: trio keeps up to 1,000 exited deadline scopes in its heap before
#: it prunes (DEADLINE_HEAP_MIN_PRUNE_THRESHOLD), each a 64-byte heap entry plus a
#: ~112-byte CancelScope, and bounded deques (latency samples) still filling. At load
#: 19 a 1.1-minute run measured 179 KiB, all of it at those sites, over 2,236
#: operations: 770 per 10k, a false leak. The code before the fix grows 1,472 KiB per
#: 10k operations, which stays over the threshold after this is taken off.
HEAP_NOISE_KIB = 176.0
#: The close scans' content-hash LRU (vfile.filter.contenthash, ENTRIES digests, each
#: with its key and the Verdict it holds, ~0.3 KiB) fills for the whole run: the soak
#: writes new content all along, and 1.5 minutes add ~2,000 of its 4,096. A merged full
#: suite measured 506 KiB per 10k operations, 560 KiB of it at those three sites with
#: 1,932 digests, one per site and block: a bounded cache filling, not a leak. Its
#: growth is taken off while it holds fewer digests than its bound, never more.
CONTENT_HASH_SITES = ("vfile/filter/contenthash.py", "vfile/scanner/verdict.py")


def _content_hashes_filling(growth: list[dict]) -> float:
    """KiB of `growth` that is the content-hash LRU filling up to its bound."""
    digests = min((g["blocks"] for g in growth
                   if g["where"].startswith(CONTENT_HASH_SITES[0])), default=0)  # one digest each
    assert digests <= contenthash.ENTRIES, (digests, growth)
    kib = 0.0
    for g in growth:
        if g["where"].startswith(CONTENT_HASH_SITES[0]):
            kib += g["kib"]
        elif g["where"].startswith(CONTENT_HASH_SITES[1]):
            # the Verdicts the digests hold, no more of them than there are digests
            kib += g["kib"] * min(1.0, digests / max(1, g["blocks"]))
    return kib
#: RssAnon growth after warm-up, KiB: a gross leak outside the Python heap (C, threads)
MAX_ANON_GROWTH = 8192


def test_short_soak_keeps_fds_and_memory_flat_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), "--minutes", "1.5", "--interval", "1",
                           "--period", "9", "--warmup", "0.4", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    assert result["lost"] == [], "files neither journaled nor scanned clean"
    assert result["workload_errors"] == []
    assert result["outages"] >= 3 and result["windows"] >= 2
    assert result["ops"] > 100 and result["opens"] > 100
    assert result["journal_max"] > 0, "the outages never reached the journal"
    assert result["fd_end"] <= result["fd_start"] + FILES + SLACK, result["samples"]
    assert len(result["samples"]) >= 30
    slopes = result["memory"]["slopes"]
    assert slopes["samples"] >= 15, slopes
    growth = result["memory"]["growth_since_warm"]
    grown = slopes["live_heap_end_kib"] - slopes["live_heap_warm_kib"]
    grown -= _content_hashes_filling(growth)
    per_10k = max(0.0, grown - HEAP_NOISE_KIB) / slopes["operations"] * 10_000
    assert per_10k < MAX_HEAP_GROWTH, (per_10k, slopes, growth)
    warm_anon = [s["anon_kib"] for s in result["samples"] if s["t"] >= slopes["since_s"]]
    assert max(warm_anon) - warm_anon[0] < MAX_ANON_GROWTH, (slopes, growth)
