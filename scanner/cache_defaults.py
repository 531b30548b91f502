"""Defaults of the caching appliance (cache, cache_grace, cache_server), without their imports.

`vfile appliance cache` shows these in its options; keeping them here lets the
command line define that command without loading redis and trio, which every
`vfile` invocation would otherwise pay (issue 12: `vfile quiesce` runs in a
freeze hook with a timeout running).
"""

from __future__ import annotations

#: seconds a stored verdict lives
DEFAULT_TTL = 48 * 3600.0
#: seconds a scan lock lives (the longest another proxy waits on it)
DEFAULT_LOCK_TTL = 15.0
#: socket timeout of one Redis call, seconds
DEFAULT_TIMEOUT = 0.25
#: background rescans per second during a signature-update grace
DEFAULT_RESCAN_RATE = 20.0
#: scan requests holding a copy of their bytes at once
DEFAULT_MAX_INFLIGHT = 64
#: shortest adaptive attempt timeout of the upstream pool, seconds. The pool's own default
#: (25 ms) suits a guest; the caching appliance's breaker is the whole fleet's, and its
#: upstream scans come in bursts by construction (a Redis stall holds every request in
#: flight for the socket timeout, then sends them all upstream at once): a burst queued at
#: a healthy upstream must not look like a hang (tests/t1_cache_upstream_burst_test.py).
UPSTREAM_ADAPTIVE_FLOOR = 1.0
