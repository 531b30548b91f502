"""Where the mount server's memory goes: RSS, the Python heap, top allocation sites.

A long-running mount must not grow with the number of operations (issue 19).
This module measures it from inside the server, so a soak (bench/soak.py) or
an operator can tell a leak from a cache filling up:

- `rss()` splits VmRSS into anonymous memory (the heap: what a leak grows)
  and file-backed pages (the LMDB journal's mmap, shared libraries: the
  kernel reclaims those under pressure).
- With ``VFILE_TRACEMALLOC=N`` in the server's environment, `tracemalloc`
  traces every Python allocation with N frames from the start of the mount.
  `MemoryWatch.report` then lists the top allocation sites, and their growth
  since a baseline snapshot (the control command ``memory`` with
  ``{"baseline": true}`` takes one; the soak takes it once the workload is
  warm). SIGUSR2 logs the same report; so does the unmount.
- ``{"types": true}`` also counts live objects by type (gc), with their growth
  since the baseline: cheap to read, and it names a leaked class directly.
  ``{"garbage": true}`` counts the cyclic garbage awaiting the collector.

Tracing costs time and memory (each traced block carries its traceback), so it
is off unless the environment asks; RSS and the heap figures are always there.
A report runs on the trio thread: with `top`, `types` or `garbage` it takes a
full collection and a snapshot, which holds up the server for tens of
milliseconds to a second. A diagnosis tool, not something to poll.

Counting objects (`census`) holds the GIL from `gc.get_objects()` until its
list is gone: that list references every tracked object, including a tuple
another thread (the journal's writer, a scan thread) is still filling in with
`tuple(generator)`. CPython grows such a tuple in place, which it refuses once
a second reference exists ("bad argument to internal function"): a user's
write-open failed that way in a soak. So no other thread may run while the
list lives (`_NoThreadSwitch`).
"""

from __future__ import annotations

import collections
import gc
import linecache
import logging
import os
import signal
import sys
import time
import tracemalloc
from typing import Any

import trio

log = logging.getLogger(__name__)

#: frames per traced allocation; unset or 0: tracing off
TRACE_ENV = "VFILE_TRACEMALLOC"
#: allocation sites listed by default
DEFAULT_TOP = 15
_IGNORED = (tracemalloc.__file__, linecache.__file__, "<frozen importlib._bootstrap>",
            "<frozen importlib._bootstrap_external>", "<unknown>")


#: switch interval while a census holds the GIL (seconds; restored right after):
#: longer than a census of a million objects (~0.1 s), and the most a report can wait
#: to get the GIL back from a thread that runs Python without blocking
_HOLD_GIL_S = 1.0


class _NoThreadSwitch:
    """Keep the GIL from being handed to another thread inside the block.

    CPython hands the GIL over when a waiting thread has waited one switch
    interval; a wait already running uses the old interval, so after raising
    it, one sleep of twice the old interval lets those waits end (and their
    threads run) before the block starts. The block must not block on I/O."""

    def __enter__(self) -> None:
        self._old = sys.getswitchinterval()
        sys.setswitchinterval(_HOLD_GIL_S)
        time.sleep(2 * self._old)

    def __exit__(self, *exc: object) -> None:
        sys.setswitchinterval(self._old)


def census() -> tuple[int, collections.Counter[str]]:
    """(objects the collector tracks, their count by type name); see the module
    docstring for why no other thread runs meanwhile. Counted in C (map, Counter's
    update), then the list is dropped before the GIL can move."""
    with _NoThreadSwitch():
        objects = gc.get_objects()
        total = len(objects)
        by_type: collections.Counter[type] = collections.Counter(map(type, objects))
        del objects
    names: collections.Counter[str] = collections.Counter()
    for kind, n in by_type.items():  # two classes may share a name: add, never overwrite
        names[kind.__qualname__] += n
    return total, names


def rss(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) in KiB, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def _frames_from_env() -> int:
    raw = os.environ.get(TRACE_ENV, "").strip()
    try:
        return max(0, int(raw)) if raw else 0
    except ValueError:
        log.warning("%s=%r is not a frame count; tracing stays off", TRACE_ENV, raw)
        return 0


def _where(tb: tracemalloc.Traceback) -> str:
    return " <- ".join(f"{_short(fr.filename)}:{fr.lineno}" for fr in tb)


def _short(filename: str) -> str:
    parts = filename.split(os.sep)
    for anchor in ("site-packages", "vfile", "scanner", "journal", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + (anchor in ("site-packages", "lib")):])
    return filename


class MemoryWatch:
    """Snapshots of one server's memory; `report` answers the ``memory`` command."""

    def __init__(self) -> None:
        self._baseline: tracemalloc.Snapshot | None = None
        self._baseline_types: collections.Counter[str] | None = None

    def start_from_env(self) -> bool:
        """Start tracing if ``VFILE_TRACEMALLOC`` asks for it; True if tracing."""
        frames = _frames_from_env()
        if frames and not tracemalloc.is_tracing():
            tracemalloc.start(frames)
            log.info("tracemalloc on (%d frames per allocation)", frames)
        return tracemalloc.is_tracing()

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, name) for name in _IGNORED])

    def report(self, *, top: int = DEFAULT_TOP, baseline: bool = False,
               types: bool = False, garbage: bool = False,
               group: str = "lineno") -> dict[str, Any]:
        """RSS, heap figures, top allocation sites (and growth since the baseline).

        `baseline`: after reporting, take a new baseline. `group`: "lineno" or
        "traceback" (all traced frames of each site). `garbage`: count, by type, the
        cyclic garbage awaiting the collector (it shows in RSS until a full collection)."""
        found: collections.Counter[str] | None = None
        if garbage:
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                gc.collect()
                found = collections.Counter(type(o).__qualname__ for o in gc.garbage)
            finally:
                gc.garbage.clear()
                gc.set_debug(0)
        if top > 0 or baseline or types:
            gc.collect()  # count what is alive, not cyclic garbage awaiting a collection
        total, counts = census()
        out: dict[str, Any] = {"rss_kib": rss(), "gc_objects": total,
                               "tracing": tracemalloc.is_tracing()}
        if found is not None:
            out["garbage"] = {"objects": sum(found.values()), "types": dict(found.most_common(top))}
        if group not in ("lineno", "traceback"):
            raise ValueError("group must be 'lineno' or 'traceback'")
        snap = None
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            out["traced_kib"] = current // 1024
            out["traced_peak_kib"] = peak // 1024
            if top > 0 or baseline:
                snap = self._snapshot()
            if top > 0 and snap is not None:
                stats = snap.statistics(group)
                out["top"] = [{"where": _where(s.traceback), "kib": round(s.size / 1024, 1),
                               "blocks": s.count} for s in stats[:top]]
                if self._baseline is not None:
                    diff = snap.compare_to(self._baseline, group)
                    out["growth"] = [
                        {"where": _where(s.traceback), "kib": round(s.size_diff / 1024, 1),
                         "blocks": s.count_diff, "kib_now": round(s.size / 1024, 1)}
                        for s in diff[:top] if s.size_diff > 0]
        if types:
            out["types"] = dict(counts.most_common(top))
            if self._baseline_types is not None:
                grown = counts.copy()
                grown.subtract(self._baseline_types)
                out["types_growth"] = {k: v for k, v in grown.most_common(top) if v > 0}
        if baseline:
            self._baseline = snap
            self._baseline_types = counts
            out["baseline_taken"] = True
        return out

    def log_report(self, why: str) -> None:
        if not tracemalloc.is_tracing():
            log.info("memory (%s): %s", why, rss())
            return
        rep = self.report(types=True)
        log.warning("memory (%s): rss %s, traced %d KiB, %d objects", why, rep["rss_kib"],
                    rep["traced_kib"], rep["gc_objects"])
        for s in rep.get("growth") or rep.get("top", []):
            log.warning("memory:   %+9.1f KiB %+7d blocks  %s", s["kib"], s["blocks"], s["where"])

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Log a report on SIGUSR2, and once more when cancelled (the unmount)."""
        with trio.open_signal_receiver(signal.SIGUSR2) as signals:
            task_status.started()
            try:
                async for _ in signals:
                    self.log_report("SIGUSR2")
            finally:
                if tracemalloc.is_tracing():
                    self.log_report("unmount")
