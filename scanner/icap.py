"""A thin trio ICAP (RFC 3507) client: a loop over icap_proto.

OPTIONS is cached for the service's Options-TTL (ISTag, Preview, Allow 204).
RESPMOD sends a preview when the service takes one; a final answer to the
preview (204 or 200) ends the request early, `100 Continue` asks for the rest.
One connection per request (a 200 reply's body is never read, so the
connection cannot be reused anyway).

Invariants: transport/protocol trouble raises `ApplianceError`; an ICAP
error status is an ERROR outcome; no timeouts here (the caller's cancel
scope bounds every call).
"""

from __future__ import annotations

import logging

import trio

from vfile.scanner import icap_proto as proto
from vfile.scanner.clamd_proto import ProtocolError
from vfile.scanner.net import connect, pread
from vfile.scanner.urls import ApplianceURL
from vfile.scanner.verdict import ApplianceError, Outcome

log = logging.getLogger(__name__)

#: body bytes per chunk sent after the preview
CHUNK = 256 * 1024


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as err:
            raise ApplianceError(f"send failed: {err}") from None

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, OSError) as err:
            raise ApplianceError(f"connection lost: {err}") from None
        if not data:
            raise ApplianceError("connection closed mid-response")
        self.buf += data

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > 1024:
                raise ProtocolError("chunk size line too long")
            await self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def head(self) -> proto.Response:
        while True:
            try:
                split = proto.split_head(self.buf)
            except ProtocolError as err:
                raise ApplianceError(str(err)) from None
            if split is not None:
                resp, rest = split
                self.buf = bytearray(rest)
                return resp
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, OSError) as err:
                raise ApplianceError(f"connection lost: {err}") from None
            if not data:
                raise ApplianceError("connection closed without a complete ICAP response")
            self.buf += data


class IcapClient:
    def __init__(self, url: ApplianceURL) -> None:
        if url.kind != "icap":
            raise ValueError(f"not an ICAP URL: {url}")
        self.url = url
        self._options: proto.Options | None = None
        self._expires = 0.0

    async def _connect(self) -> _Conn:
        try:
            return _Conn(await connect(self.url.address))
        except OSError as err:
            raise ApplianceError(f"cannot connect: {err.strerror or err}") from None

    async def fetch_options(self) -> proto.Options:
        """Ask OPTIONS now (and refresh the cache)."""
        conn = await self._connect()
        async with conn.stream:
            await conn.send(proto.build_options(self.url))
            resp = await conn.head()
        try:
            opts = proto.parse_options(resp)
        except ProtocolError as err:
            raise ApplianceError(str(err)) from None
        self._options = opts
        self._expires = trio.current_time() + opts.ttl
        return opts

    async def options(self) -> proto.Options:
        if self._options is None or trio.current_time() >= self._expires:
            return await self.fetch_options()
        return self._options

    async def probe(self) -> str:
        return (await self.fetch_options()).istag

    @property
    def istag(self) -> str:
        return self._options.istag if self._options else ""

    async def scan_fd(self, fd: int, *, size: int, limit: int | None = None) -> tuple[Outcome, str]:
        opts = await self.options()
        length = size if limit is None else min(size, limit)
        preview = None if opts.preview is None else min(opts.preview, length)
        conn = await self._connect()
        async with conn.stream:
            try:
                return await self._respmod(conn, fd, length, preview)
            except OSError as err:
                return Outcome.ERROR, f"cannot read file: {err.strerror or err}"

    async def _respmod(self, conn: _Conn, fd: int, length: int,
                       preview: int | None) -> tuple[Outcome, str]:
        head = proto.build_respmod(self.url, size=length, preview=preview)
        offset = 0
        if preview is not None:
            data = await pread(fd, preview, 0) if preview else b""
            offset = len(data)
            last = proto.LAST_CHUNK_IEOF if offset >= length else proto.LAST_CHUNK
            await conn.send(head + proto.encode_chunk(data) + last)
            resp = await conn.head()
            if resp.status == 204 and offset < length:
                # The server decided on the preview alone: it never saw the rest of the
                # file (c-icap does this over virus_scan.MaxObjectSize, or for a file
                # type outside ScanFileTypes). Unscanned bytes are no verdict.
                return Outcome.ERROR, (f"size limit or skipped type: 204 after a preview of "
                                       f"{offset} of {length} bytes, the file was not scanned")
            if resp.status != 100:
                return await self._final(conn, resp, fd, length)
            if offset >= length:
                raise ApplianceError("100 Continue after the whole body was sent (ieof)")
        else:
            await conn.send(head)
        while offset < length:
            data = await pread(fd, min(CHUNK, length - offset), offset)
            if not data:
                break
            await conn.send(proto.encode_chunk(data))
            offset += len(data)
        await conn.send(proto.LAST_CHUNK)
        resp = await conn.head()
        return await self._final(conn, resp, fd, length)

    async def _final(self, conn: _Conn, resp: proto.Response, fd: int,
                     length: int) -> tuple[Outcome, str]:
        istag = (resp.header("istag") or "").strip().strip('"')
        if istag and self._options is not None and istag != self._options.istag:
            # signatures changed: refresh OPTIONS on the next request
            self._expires = 0.0
        try:
            # c-icap echoes files whose type it does not scan (and some servers
            # ignore Allow: 204): an exact echo is a pass, only a changed body a finding
            if (resp.status == 200 and not proto.has_signature(resp)
                    and await self._echoed(conn, resp, fd, length)):
                return Outcome.CLEAN, ""
            return proto.respmod_verdict(resp)
        except ProtocolError as err:
            raise ApplianceError(str(err)) from None

    async def _echoed(self, conn: _Conn, resp: proto.Response, fd: int, length: int) -> bool:
        """Whether a 200 reply carries our HTTP 200 response and the file's exact bytes."""
        enc = proto.parse_encapsulated(resp.header("encapsulated"))
        if "res-body" not in enc:
            return False
        http = await conn.read_exact(enc["res-body"])
        if not (http.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))):
            return False
        offset = 0
        while True:
            size = proto.parse_chunk_size(await conn.read_line())
            if size == 0:
                return offset == length
            if offset + size > length:
                return False
            data = await conn.read_exact(size)
            if data != await pread(fd, size, offset):
                return False
            offset += size
            if await conn.read_exact(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
