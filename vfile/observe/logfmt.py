"""Log line formats: the plain text default, or one JSON object per line.

JSON lines carry ``time`` (RFC 3339, UTC, milliseconds), ``level``,
``logger`` and ``message`` (arguments already merged), then every extra
field the caller passed (``log.info(..., extra={"path": p})``), then
``exception`` when there is one. Values JSON cannot represent become strings,
so a log call never fails on formatting.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

#: `--log-format` values
LOG_FORMATS = ("plain", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else came in through `extra=`
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def rfc3339(t: float) -> str:
    """UTC time with milliseconds, e.g. 2024-05-01T12:00:00.123Z (pure)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": rfc3339(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "plain":
        return logging.Formatter(PLAIN_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
