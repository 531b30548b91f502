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
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TextIO

from vfile.errors import Exit, UserError
from vfile.observe.logfmt import rfc3339

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file: TextIO | None = None
        self.lines = 0

    def open(self) -> AuditLog:
        try:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
            # buffering=1: line-buffered text, so each line reaches the file at once.
            self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        except OSError as err:
            raise UserError(f"cannot open audit log {self.path!r}: {err.strerror}",
                            Exit.CONFIG) from None
        return self

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, event: str, path: str, fields: dict[str, object]) -> None:
        if self._file is None:
            return
        line: dict[str, object] = {"time": rfc3339(time.time()), "event": event, "path": path}
        line.update((k, v) for k, v in fields.items() if v is not None)
        try:
            self._file.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
        except (OSError, ValueError) as err:
            log.error("audit log %r: cannot write (%s); audit lines stop here", self.path, err)
            self.close()
            return
        self.lines += 1
