"""The audit log: one JSON line per verdict and per action, for grep or a shipper.

Each line has ``time`` (RFC 3339 UTC), ``event``, ``path`` (relative to the
source), then what is known at that point: ``verdict`` (clean, infected,
none), ``signature``, ``appliance``, ``profile``, ``action`` (allow, deny,
defer, quarantine, rename, delete, hook, none), ``reason``, ``uid``, ``pid``.

Events:
  verdict  a scan (on open, after write, or by the drain) gave a verdict;
           ``action`` is what was done about an infected file
  deny     an open or a write was refused (``reason`` says why)
  unscanned  an open was allowed without a verdict (``action`` allow for a
           fail-open profile, defer for a fail-safe one, journaled)

Cheap by design: the file is opened once in append mode, line-buffered (one
write(2) per line, no fsync); it is an operator's record, the journal is the
durable one. Rotate it with logrotate's ``copytruncate`` (the file stays
open). A write error is logged once and the audit log then stays quiet rather than failing
I/O through the mount.

Never on the event loop: `write` only formats the line and puts it on a
bounded queue (`QUEUE_SIZE` lines); a writer thread does the write(2). A
disk that takes no writes (frozen during a migration, full, slow) thus never
stalls a request; once the queue is full, lines are dropped and counted
(`statistics`, shown in `vfile status`), and the writer notes how many in
the file (a ``dropped`` event) when it catches up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from typing import TextIO

from vfile.errors import Exit, UserError
from vfile.observe.logfmt import json_line, rfc3339
from vfile.observe.private import open_private_append

log = logging.getLogger(__name__)

#: audit lines waiting for the writer thread before new ones are dropped
QUEUE_SIZE = 10_000
#: how long close() waits for the writer to flush what is queued
FLUSH_DEADLINE = 5.0
_STOP = ""


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO | None = None
        self.lines = 0
        self.dropped = 0
        self._reported = 0
        self._queue: queue.Queue[str] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    def open(self) -> AuditLog:
        try:
            # Explicit modes (the mount server's umask is 0: a 0666 log let anyone forge
            # or erase its lines and read who opened what, x23), O_NOFOLLOW, a directory
            # no other user may write (x24): vfile.observe.private.
            fd = open_private_append(self.path)
            # buffering=1: line-buffered text, so each line reaches the file at once.
            self._file = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        except OSError as err:
            raise UserError(f"cannot open audit log {self.path!r}: {err.strerror}",
                            Exit.CONFIG) from None
        self._thread = threading.Thread(target=self._writer, name="audit writer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Flush what is queued (at most FLUSH_DEADLINE) and close the file."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=FLUSH_DEADLINE)
        thread.join(FLUSH_DEADLINE)
        if thread.is_alive():
            log.error("audit log %r: the disk takes no writes; %d line(s) not written",
                      self.path, self._queue.qsize())

    def write(self, event: str, path: str, fields: dict[str, object]) -> None:
        """Queue one line (never blocks: a full queue drops it, counted)."""
        if self._thread is None:
            return
        line: dict[str, object] = {"time": rfc3339(time.time()), "event": event, "path": path}
        line.update((k, v) for k, v in fields.items() if v is not None)
        try:
            # json_line: a name that is not UTF-8 stopped the audit log for good (s26)
            self._queue.put_nowait(json_line(line) + "\n")
        except queue.Full:
            self.dropped += 1

    def _writer(self) -> None:
        f = self._file
        assert f is not None
        try:
            while (text := self._queue.get()) != _STOP:
                missed = self.dropped - self._reported
                if missed:
                    self._reported += missed
                    text = json.dumps({"time": rfc3339(time.time()), "event": "dropped",
                                       "path": "", "lines": missed}) + "\n" + text
                f.write(text)
                self.lines += 1
        except (OSError, ValueError) as err:
            log.error("audit log %r: cannot write (%s); audit lines stop here", self.path, err)
            self._thread = None  # write() stops queueing
        finally:
            self._file = None
            f.close()

    def statistics(self) -> dict[str, int]:
        return {"lines": self.lines, "queued": self._queue.qsize(), "dropped": self.dropped}
