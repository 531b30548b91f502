"""Defaults of `vfile prewarm` (vfile.prewarm), without its imports.

The command line shows these in the command's options; keeping them here lets
it define the command without loading trio and the filter, which every `vfile`
invocation would otherwise pay (issue 12: `vfile quiesce` runs in a freeze hook
with a timeout running).
"""

from __future__ import annotations

#: files opened per second at most
DEFAULT_RATE = 50.0
#: opens in flight at once
DEFAULT_CONCURRENCY = 4
