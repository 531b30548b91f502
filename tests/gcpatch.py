"""A server patch for the verdict collection's tests (tests/t5_attack28_gc_walk_test.py,
t5_attack29_gc_walk_test.py, through serverpatches.patched): the collection every half
second from a second after the start, each run logged ("test patch: a collection ran",
counted by `collections`), and its walk's `os.scandir` replaced by the test's own
`scandir(path=".")`, which may call `real_scandir` (only the collection's walk: the rest
of the server keeps the real os module)."""

from __future__ import annotations

import textwrap

_HEAD = """
    import errno
    import logging
    import os
    import types
    from vfile.filter import verdict_gc

    real_init = verdict_gc.VerdictCollector.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._first_delay, self._interval = 1.0, 0.5
        logging.getLogger("vfile").warning("test patch: collections every 0.5 s")

    verdict_gc.VerdictCollector.__init__ = init
    real_scandir = os.scandir
"""

_TAIL = """
    verdict_gc.os = types.SimpleNamespace(**{**vars(os), "scandir": scandir})
    real_collect = verdict_gc.collect

    async def collect(*args, **kwargs):
        done = await real_collect(*args, **kwargs)
        logging.getLogger("vfile").warning("test patch: a collection ran: %s", done)
        return done

    verdict_gc.collect = collect
"""


def collector_patch(scandir: str) -> str:
    """The patch's code, with `scandir` (a function's source, at any indentation)."""
    return textwrap.dedent(_HEAD) + textwrap.dedent(scandir) + textwrap.dedent(_TAIL)


def collections(log: str) -> int:
    """Collections run so far in a patched server's log."""
    return log.count("test patch: a collection ran")
