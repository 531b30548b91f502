"""Log lines leave the event loop through a bounded queue, written by one thread.

A mount server's log file (and its audit log, vfile.observe.audit) may sit on a disk
that stops taking writes: frozen by `fsfreeze` during a migration, full, or
slow. A `write(2)` on the trio thread would then stop every request of the
mount, cached opens included. So the server's log handler only formats the
record and puts it on a bounded queue (`QUEUE_SIZE` records); a writer thread
does the I/O. When the queue is full, records are dropped and counted (shown
in `vfile status`, and announced by one line once the writer catches up),
never waited for.

Invariants:
- `emit` never blocks and never raises: a full queue drops, a formatting
  failure goes to logging's usual `handleError`.
- `stop_queued_logging` flushes what is queued, with a deadline (a frozen
  disk must not keep the process from exiting).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any

#: log records waiting for the writer thread before new ones are dropped
QUEUE_SIZE = 10_000
#: how long exit waits for the writer to flush what is queued
FLUSH_DEADLINE = 5.0

_STOP = object()


class DropCounter:
    """Lines dropped because a writer thread fell behind (thread-safe enough: the
    trio thread adds, the writer reads and resets)."""

    def __init__(self) -> None:
        self.dropped = 0
        self.reported = 0


class QueuedHandler(logging.Handler):
    """Formats on the caller's thread, writes on a writer thread (module docstring)."""

    def __init__(self, target: logging.Handler, size: int = QUEUE_SIZE) -> None:
        super().__init__()
        self.target = target
        self.queue: queue.Queue[Any] = queue.Queue(size)
        self.counter = DropCounter()
        #: lines put on the queue; once `written` reaches a value read here, every line
        #: accepted before that read is in the file (the queue is FIFO)
        self.accepted = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="log writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.target.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            self.counter.dropped += 1
        else:
            self.accepted += 1

    def _run(self) -> None:
        stream = getattr(self.target, "stream", None)
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            try:
                missed = self.counter.dropped - self.counter.reported
                if missed and stream is not None:
                    self.counter.reported += missed
                    stream.write(f"vfile: {missed} log line(s) dropped: the log could not "
                                 "keep up (a frozen or slow disk?)\n")
                if stream is not None:
                    stream.write(item + "\n")
                    stream.flush()
            except Exception:  # a log line must never take the writer down
                pass
            # counted even when the write failed: `written` is how far the writer got
            self.written += 1

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=FLUSH_DEADLINE)
        self._thread.join(FLUSH_DEADLINE)
        super().close()

    def statistics(self) -> dict[str, int]:
        return {"queued": self.queue.qsize(), "dropped": self.counter.dropped,
                "accepted": self.accepted, "written": self.written}


_installed: QueuedHandler | None = None


def install(target: logging.Handler, level: int) -> QueuedHandler:
    """Make a QueuedHandler around `target` the root logger's only handler."""
    global _installed
    handler = QueuedHandler(target)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    _installed = handler
    return handler


def statistics() -> dict[str, int] | None:
    """The installed handler's counters, or None when logging is not queued."""
    return None if _installed is None else _installed.statistics()
