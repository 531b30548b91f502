"""The clamd protocol as pure functions over bytes (both directions).

Client side: build commands (`z…\\0` form), frame INSTREAM chunks, split and
parse replies. Server side (the built-in appliance): split commands in either
`z…\\0` or `n…\\n` form.

Invariant: only the exact reply `NAME: OK` means clean. `NAME: SIG FOUND` is
infected, except `Heuristics.Limits.Exceeded.*` (clamd stopped at a scan limit:
an error), `… ERROR` is an appliance-reported error, and anything else —
unknown words, control bytes, non-ASCII, oversize — raises `ProtocolError`,
which callers turn into an error verdict. Nothing unparsed is ever clean.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from vfile.scanner.verdict import Outcome

#: a reply longer than this is hostile or broken (clamd's are < 300 bytes)
MAX_REPLY = 4096
#: INSTREAM chunk size we send; clamd accepts any size up to StreamMaxLength
CHUNK = 256 * 1024
INSTREAM_END = b"\0\0\0\0"
#: the longest chunk length the built-in appliance accepts in one frame
MAX_CHUNK = 64 * 1024 * 1024

# A signature name: printable ASCII without whitespace (clamd's names are
# like `Win.Test.EICAR_HDB-1` or `Test.EICAR.HDB.UNOFFICIAL`).
_SIG = re.compile(r"[!-~]{1,256}")
# The subject before `: ` — `stream`, `fd[12]`, a path, or an IDSESSION number.
_REPLY = re.compile(r"(?P<subject>[ -~]{1,1024}?): (?P<rest>[ -~]{1,1024})")


class ProtocolError(ValueError):
    """A reply or command that does not follow the protocol."""


def command(name: str) -> bytes:
    """A client command in the null-terminated `z` form."""
    if not name or not name.isascii() or "\0" in name or "\n" in name:
        raise ValueError(f"bad clamd command {name!r}")
    return b"z" + name.encode("ascii") + b"\0"


def chunk(data: bytes | memoryview) -> bytes:
    """The 4-byte network-order length prefix of one INSTREAM chunk."""
    return struct.pack("!I", len(data))


def split_reply(buf: bytes | bytearray) -> tuple[bytes, bytes] | None:
    """Split one `\\0`- or `\\n`-terminated reply off `buf`; None if incomplete.

    Raises ProtocolError when no terminator is found within MAX_REPLY bytes.
    """
    # `find`, not a loop over the bytes: the drain splits a reply per file scanned.
    ends = [i for i in (buf.find(b"\0", 0, MAX_REPLY + 1), buf.find(b"\n", 0, MAX_REPLY + 1))
            if i >= 0]
    if ends:
        i = min(ends)
        return bytes(buf[:i]), bytes(buf[i + 1:])
    if len(buf) > MAX_REPLY:
        raise ProtocolError(f"reply longer than {MAX_REPLY} bytes")
    return None


def _text(reply: bytes) -> str:
    if len(reply) > MAX_REPLY:
        raise ProtocolError(f"reply longer than {MAX_REPLY} bytes")
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("reply is not ASCII") from None
    if not text.isprintable():
        raise ProtocolError("reply contains control characters")
    return text


#: what clamd reports (with AlertExceedsMax yes) for content over its scan limits
LIMITS_EXCEEDED = "Heuristics.Limits.Exceeded"


def parse_scan_reply(reply: bytes) -> tuple[Outcome, str]:
    """Parse a scan reply (without its terminator) into (outcome, detail).

    Raises ProtocolError for anything not understood.
    """
    text = _text(reply)
    if text.endswith(" ERROR"):
        # `stream: Can't allocate memory ERROR`, `INSTREAM size limit exceeded. ERROR`
        reason = text[: -len(" ERROR")].strip()
        _subject, sep, rest = reason.partition(": ")
        return Outcome.ERROR, (rest if sep and rest else reason) or "appliance error"
    m = _REPLY.fullmatch(text)
    if m is None:
        raise ProtocolError(f"unrecognised reply {text[:80]!r}")
    rest = m["rest"]
    if rest == "OK":
        return Outcome.CLEAN, ""
    if rest.endswith(" FOUND"):
        sig = rest[: -len(" FOUND")]
        if sig.startswith(LIMITS_EXCEEDED):
            # clamd stopped at MaxFileSize/MaxScanSize/MaxFiles/MaxRecursion... and says so
            # (only with AlertExceedsMax): it did not scan everything, so no verdict.
            return Outcome.ERROR, f"size limit exceeded, not scanned ({sig})"
        if _SIG.fullmatch(sig):
            return Outcome.INFECTED, sig
    raise ProtocolError(f"unrecognised reply {text[:80]!r}")


def is_signature_name(text: str) -> bool:
    """Whether `text` may be a signature name in a FOUND reply (the embedded engine's
    results are held to the same rule)."""
    return _SIG.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Version:
    engine: str  # "ClamAV 1.4.6"
    db_version: str  # "27000", "" when the appliance has no official database
    db_date: str

    @property
    def signature_version(self) -> str:
        """What identifies the signatures: the database version, else the engine.

        clamd with only local (.hdb) databases reports no database version, so
        the engine string is the best identity available there.
        """
        return f"{self.engine}/{self.db_version}" if self.db_version else self.engine


def parse_version(reply: bytes) -> Version:
    """Parse a VERSION reply: `ClamAV 1.4.6/27000/Thu Nov 20 09:00:00 2026` or `ClamAV 1.4.6`."""
    text = _text(reply).strip()
    if not text or len(text) > 512:
        raise ProtocolError("empty or oversized VERSION reply")
    engine, _, rest = text.partition("/")
    db_version, _, db_date = rest.partition("/")
    if not engine.strip() or ("/" in db_date):
        raise ProtocolError(f"unrecognised VERSION reply {text[:80]!r}")
    return Version(engine.strip(), db_version.strip(), db_date.strip())


def parse_pong(reply: bytes) -> None:
    if reply != b"PONG":
        raise ProtocolError(f"unexpected PING reply {reply[:40]!r}")


# --- server side ---------------------------------------------------------


def split_command(buf: bytes | bytearray, limit: int = 1024) -> tuple[str, str, bytes] | None:
    """Split one command off `buf` → (name, terminator, rest); None if incomplete.

    Accepts `zNAME\\0` and `nNAME\\n` (and bare `NAME\\n`, which clamd tolerates
    for some commands). Raises ProtocolError for a command over `limit` bytes
    or that is not ASCII.
    """
    if not buf:
        return None
    if buf[:1] == b"z":
        term, body_start = b"\0", 1
    elif buf[:1] == b"n":
        term, body_start = b"\n", 1
    else:
        term, body_start = b"\n", 0
    end = bytes(buf[: limit + 1]).find(term)
    if end < 0:
        if len(buf) > limit:
            raise ProtocolError("command too long")
        return None
    try:
        name = bytes(buf[body_start:end]).decode("ascii").strip()
    except UnicodeDecodeError:
        raise ProtocolError("command is not ASCII") from None
    return name, term.decode("ascii"), bytes(buf[end + 1:])


def parse_chunk_length(header: bytes) -> int:
    if len(header) != 4:
        raise ProtocolError("short INSTREAM chunk header")
    (length,) = struct.unpack("!I", header)
    return int(length)
