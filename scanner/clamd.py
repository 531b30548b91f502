"""A thin trio client for clamd (and the built-in appliance): a loop over clamd_proto.

One connection per request, except FILDES scans on a unix socket: those reuse
idle IDSESSION connections (scanner/clamd_session.py), because on a busy host
the connection per file cost more server time than the scan of a small file
(bench/drain.py --scale). A fresh connection cannot carry state from a request
that was cancelled half-way; a session is therefore closed on anything but a
complete verdict.

Invariants: transport and protocol trouble raises `ApplianceError`; a
well-formed appliance error (e.g. INSTREAM size limit) is returned as an
ERROR outcome; a source read error is an ERROR outcome that is not the
appliance's fault. No timeouts here: the caller's cancel scope bounds it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from vfile.scanner import clamd_proto as proto
from vfile.scanner.clamd_session import Sessions, read_reply
from vfile.scanner.net import connect, pread
from vfile.scanner.urls import ApplianceURL
from vfile.scanner.verdict import ApplianceError, Outcome

log = logging.getLogger(__name__)


class ClamdClient:
    def __init__(self, url: ApplianceURL) -> None:
        if url.kind != "clamd":
            raise ValueError(f"not a clamd URL: {url}")
        self.url = url
        self._sessions = Sessions(url.address) if url.address.is_unix else None

    async def _connect(self) -> trio.SocketStream:
        try:
            return await connect(self.url.address)
        except OSError as err:
            raise ApplianceError(f"cannot connect: {err.strerror or err}") from None

    async def request(self, name: str) -> bytes:
        """Send one command, return its reply (without terminator)."""
        stream = await self._connect()
        async with stream:
            try:
                await stream.send_all(proto.command(name))
            except (trio.BrokenResourceError, OSError) as err:
                raise ApplianceError(f"send failed: {err}") from None
            return await read_reply(stream)

    async def ping(self) -> None:
        try:
            proto.parse_pong(await self.request("PING"))
        except proto.ProtocolError as err:
            raise ApplianceError(str(err)) from None

    async def version(self) -> proto.Version:
        try:
            return proto.parse_version(await self.request("VERSION"))
        except proto.ProtocolError as err:
            raise ApplianceError(str(err)) from None

    async def probe(self) -> str:
        """Health probe: VERSION (proves liveness and gives the signature version)."""
        return (await self.version()).signature_version

    async def scan_fd(self, fd: int, *, size: int, limit: int | None = None) -> tuple[Outcome, str]:
        """Scan the open regular file `fd`: FILDES on unix sockets, else INSTREAM."""
        whole = limit is None or limit >= size
        if self._sessions is not None and whole:
            reply = await self._sessions.fildes(fd)
        else:
            stream = await self._connect()
            async with stream:
                reply_or_err = await self._instream(stream, fd, size if whole else int(limit or 0))
            if isinstance(reply_or_err, tuple):
                return reply_or_err
            reply = reply_or_err
        try:
            return proto.parse_scan_reply(reply)
        except proto.ProtocolError as err:
            raise ApplianceError(str(err)) from None

    @property
    def pipelines(self) -> bool:
        """Whether `scan_fds` may be used (FILDES: a unix socket)."""
        return self._sessions is not None

    async def scan_fds(self, fds: Sequence[int]) -> list[tuple[Outcome, str]]:
        """Whole-file scans of the open regular files `fds`, pipelined on one session
        connection (unix sockets only: see `pipelines`); a malformed reply fails them all."""
        assert self._sessions is not None
        try:
            return [proto.parse_scan_reply(r) for r in await self._sessions.fildes_many(fds)]
        except proto.ProtocolError as err:
            raise ApplianceError(str(err)) from None

    async def _instream(self, stream: trio.SocketStream, fd: int,
                        length: int) -> bytes | tuple[Outcome, str]:
        offset = 0
        # the command, first chunk and end marker go out in as few sends as
        # possible: separate small writes cost a delayed-ACK round trip on TCP
        pending = proto.command("INSTREAM")
        try:
            while offset < length:
                try:
                    data = await pread(fd, min(proto.CHUNK, length - offset), offset)
                except OSError as err:
                    return Outcome.ERROR, f"cannot read file: {err.strerror or err}"
                if not data:
                    break  # the file shrank under us: scan what is there
                offset += len(data)
                tail = proto.INSTREAM_END if offset >= length else b""
                await stream.send_all(pending + proto.chunk(data) + data + tail)
                pending = b""
                if tail:
                    return await read_reply(stream)
            await stream.send_all(pending + proto.INSTREAM_END)
        except (trio.BrokenResourceError, OSError) as err:
            # clamd closes the socket when StreamMaxLength is exceeded, after
            # sending its reason; read it if it is there
            log.debug("INSTREAM send to %s stopped at %d: %s", self.url, offset, err)
        return await read_reply(stream)
