"""Defaults of `vfile prewarm` (vfile.prewarm), without its imports.

The command line shows these in the command's options; keeping them here lets
it define the command without loading trio and the filter, which every `vfile`
invocation would otherwise pay (issue 12: `vfile quiesce` runs in a freeze hook
with a timeout running).
"""

from __future__ import annotations

from vfile.limits import MAX_FILES_PER_S, in_range

#: files opened per second at most
DEFAULT_RATE = 50.0
#: opens in flight at once
DEFAULT_CONCURRENCY = 4
#: the range of --rate (files/s): NaN went unpaced, 1e-300 waited forever (b27)
MIN_RATE = 0.01
MAX_RATE = MAX_FILES_PER_S
#: the most opens in flight (each a worker thread)
MAX_CONCURRENCY = 256


def check_pacing(rate: float, concurrency: int) -> str | None:
    """Why `rate` and `concurrency` cannot be used, or None (NaN is never in range)."""
    if not in_range(rate, MIN_RATE, MAX_RATE) or not in_range(concurrency, 1, MAX_CONCURRENCY):
        return (f"--rate must be from {MIN_RATE:g} to {MAX_RATE:g} files/s and --concurrency "
                f"from 1 to {MAX_CONCURRENCY}")
    return None
