"""Log line formats: the plain text default, or one JSON object per line.

JSON lines carry ``time`` (RFC 3339, UTC, milliseconds), ``level``,
``logger`` and ``message`` (arguments already merged), then every extra
field the caller passed (``log.info(..., extra={"path": p})``), then
``exception`` when there is one. Values JSON cannot represent become strings,
so a log call never fails on formatting.

Names in messages are other people's (s26, tests/t4_input26_test.py): a newline in a
file name made a forged line in the plain log, and a name that is not UTF-8 (a lone
surrogate in Python's str of it) made a JSON line that a UTF-8 file cannot hold. So
plain messages show control characters escaped (`escape_controls`: no line is ever
split, no terminal escape passes), and JSON lines carry lone surrogates as their \\u
escape (`json_line`: valid JSON, and os.fsencode of the value gives the bytes back).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

#: `--log-format` values
LOG_FORMATS = ("plain", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else came in through `extra=`
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


# C0 and C1 controls but tab, DEL, and lone surrogates (bytes of a name not UTF-8)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    o = ord(c)
    if c in _NAMED:
        return _NAMED[c]
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: the byte it stands for
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def escape_controls(text: str) -> str:
    """`text` with control characters and lone surrogates escaped (module doc)."""
    return _CONTROL.sub(_escape_one, text)


def shown(name: str) -> str:
    """A name as one field of a line of output: as it is if printable, else quoted
    with everything else escaped (as `ls` quotes such names)."""
    if name.isprintable():
        return name
    return "'" + escape_controls(name.replace("\\", "\\\\").replace("'", "\\'")) + "'"


def json_line(obj: object) -> str:
    """One JSON line of `obj`, lone surrogates as \\u escapes (module doc)."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                          json.dumps(obj, default=str, ensure_ascii=False))


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
        return json_line(out)


class PlainFormatter(logging.Formatter):
    """PLAIN_FORMAT, its message with control characters escaped (module doc)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "plain":
        return PlainFormatter(PLAIN_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
