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
