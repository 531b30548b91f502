"""ICAP (RFC 3507) as pure functions over bytes: OPTIONS and RESPMOD.

The file to scan travels as the body of an encapsulated HTTP response
(`Encapsulated: res-hdr=0, res-body=N`), chunked, with a preview when the
service offers one and `Allow: 204` so a clean file costs no echoed body.

Invariants: `204` is the only clean answer. A `200` carrying an infection
header (X-Infection-Found, X-Violations-Found, X-Virus-ID) is infected with
that signature; a `200` without one means the service modified the response,
which we also call infected (we asked for 204, so a rewrite means it objected).
Other statuses are errors; a head that does not parse, or exceeds MAX_HEAD,
raises `ProtocolError`. Nothing unparsed is ever clean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vfile.scanner.clamd_proto import ProtocolError
from vfile.scanner.urls import ApplianceURL
from vfile.scanner.verdict import Outcome

#: the longest ICAP response head we accept
MAX_HEAD = 64 * 1024
LAST_CHUNK = b"0\r\n\r\n"
LAST_CHUNK_IEOF = b"0; ieof\r\n\r\n"
#: Options-TTL when the service names none (RFC 3507: "unlimited"; we re-ask)
DEFAULT_TTL = 60.0
MODIFIED_SIGNATURE = "ICAP.Modified.Response"

_STATUS = re.compile(r"ICAP/1\.[01] (\d{3})(?: (.*))?")
_THREAT = re.compile(r"Threat=([^;]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    #: lower-cased header name → value (repeated headers joined with ", ";
    #: folded continuation lines joined with "\n")
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Options:
    istag: str
    preview: int | None  # None: the service does not take previews
    allow_204: bool
    ttl: float
    max_connections: int | None
    methods: tuple[str, ...]


def _host_header(url: ApplianceURL) -> str:
    a = url.address
    return f"{a.host}:{a.port}"


def _service_uri(url: ApplianceURL) -> str:
    a = url.address
    host = f"[{a.host}]" if ":" in a.host else a.host
    return f"icap://{host}:{a.port}/{url.service}"


def build_options(url: ApplianceURL) -> bytes:
    return (f"OPTIONS {_service_uri(url)} ICAP/1.0\r\n"
            f"Host: {_host_header(url)}\r\n"
            "Encapsulated: null-body=0\r\n\r\n").encode("ascii")


def encode_chunk(data: bytes | memoryview) -> bytes:
    """One HTTP/1.1 chunk (empty data gives b"", never the last-chunk marker)."""
    if not len(data):
        return b""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


def build_respmod(url: ApplianceURL, *, size: int, preview: int | None) -> bytes:
    """The head of a RESPMOD request for a body of `size` bytes.

    `preview` is the number of body bytes sent before the first last-chunk
    marker (None: no preview, the whole body follows).
    """
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\n\r\n").encode("ascii")
    lines = [f"RESPMOD {_service_uri(url)} ICAP/1.0",
             f"Host: {_host_header(url)}",
             "Allow: 204",
             f"Encapsulated: res-hdr=0, res-body={len(http)}"]
    if preview is not None:
        lines.append(f"Preview: {preview}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + http


def split_head(buf: bytes | bytearray) -> tuple[Response, bytes] | None:
    """Split and parse one response head off `buf`; None if incomplete."""
    end = bytes(buf[: MAX_HEAD + 4]).find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ProtocolError(f"ICAP response head longer than {MAX_HEAD} bytes")
        return None
    return parse_head(bytes(buf[:end])), bytes(buf[end + 4:])


def parse_head(head: bytes) -> Response:
    """Parse a response head (status line and headers, without the blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("ICAP response head is not ASCII") from None
    lines = text.split("\r\n")
    m = _STATUS.fullmatch(lines[0])
    if m is None:
        raise ProtocolError(f"bad ICAP status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    last: str | None = None
    for line in lines[1:]:
        if not line.isprintable() and not all(c.isprintable() or c == "\t" for c in line):
            raise ProtocolError("control characters in ICAP header")
        if line[:1] in (" ", "\t"):
            # obsolete line folding (c-icap folds X-Violations-Found)
            if last is None:
                raise ProtocolError("continuation line before any header")
            headers[last] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise ProtocolError(f"bad ICAP header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
        last = key
    return Response(int(m[1]), (m[2] or "").strip(), headers)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and len(value) < 12 else None


def parse_options(resp: Response) -> Options:
    if resp.status != 200:
        raise ProtocolError(f"OPTIONS answered {resp.status} {resp.reason}")
    istag = (resp.header("istag") or "").strip().strip('"')
    if not istag:
        raise ProtocolError("OPTIONS reply has no ISTag")
    allow = {t.strip() for t in (resp.header("allow") or "").split(",")}
    ttl = _int(resp.header("options-ttl"))
    methods = tuple(m.strip().upper() for m in (resp.header("methods") or "").split(",")
                    if m.strip())
    if methods and "RESPMOD" not in methods:
        raise ProtocolError(f"ICAP service does not offer RESPMOD (only {', '.join(methods)})")
    return Options(istag=istag, preview=_int(resp.header("preview")), allow_204="204" in allow,
                   ttl=float(ttl) if ttl is not None else DEFAULT_TTL,
                   max_connections=_int(resp.header("max-connections")), methods=methods)


def _signature(resp: Response) -> str | None:
    found = resp.header("x-infection-found")
    if found:
        m = _THREAT.search(found)
        if m and m[1].strip():
            return m[1].strip()
    virus_id = resp.header("x-virus-id")
    if virus_id and virus_id.strip():
        return virus_id.strip().splitlines()[0].strip()
    violations = resp.header("x-violations-found")
    if violations:
        # count, then groups of 4 lines: filename, threat name, violation id, disposition
        lines = [ln.strip() for ln in violations.split("\n")]
        if len(lines) >= 3 and lines[2]:
            return lines[2]
        return MODIFIED_SIGNATURE
    return None


def respmod_verdict(resp: Response) -> tuple[Outcome, str]:
    """The verdict of a final RESPMOD response (not 100 Continue)."""
    if resp.status == 204:
        return Outcome.CLEAN, ""
    if resp.status == 200:
        return Outcome.INFECTED, _signature(resp) or MODIFIED_SIGNATURE
    if resp.status == 100:
        raise ProtocolError("100 Continue is not a final response")
    return Outcome.ERROR, f"ICAP {resp.status} {resp.reason}".strip()


def has_signature(resp: Response) -> bool:
    """Whether a 200 reply names an infection (else its body must be compared)."""
    return _signature(resp) not in (None, MODIFIED_SIGNATURE) or bool(
        resp.header("x-violations-found"))


def parse_encapsulated(value: str | None) -> dict[str, int]:
    """`res-hdr=0, res-body=136` → {"res-hdr": 0, "res-body": 136}."""
    out: dict[str, int] = {}
    for part in (value or "").split(","):
        name, sep, num = part.strip().partition("=")
        if not sep or not num.strip().isdigit() or len(num.strip()) > 12:
            raise ProtocolError(f"bad Encapsulated header {value!r}")
        out[name.strip().lower()] = int(num)
    return out


def parse_chunk_size(line: bytes) -> int:
    """The size of a chunk from its size line (without CRLF), extensions ignored."""
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 12 or any(c not in b"0123456789abcdefABCDEF" for c in size):
        raise ProtocolError(f"bad chunk size line {line[:40]!r}")
    return int(size, 16)
