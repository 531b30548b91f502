"""A fault-injection proxy in front of any appliance (clamd or ICAP, TCP or unix).

Bytes are forwarded both ways unchanged unless a fault is set; descriptors
passed as SCM_RIGHTS (clamd FILDES) are forwarded too when both sides are
unix sockets. Faults apply to what flows back from the appliance:
`blackhole` swallows it, `delay` holds each piece back, `garbage` replaces
it, `truncate` forwards half of the first piece and closes, `trickle` sends
it a byte at a time, `oversize` replaces it with a far too long reply;
`reset` and `refuse` act on the client connection.

Invariants: both pumps of a connection live in one nursery, so when either
side closes, the other is torn down; every server task ends with `serve()`.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket

import trio

from vfile.scanner.faults import GARBAGE, OVERSIZE, TRICKLE_INTERVAL, Fault
from vfile.scanner.net import FaultSwitch, connect, reset, serve_switchable
from vfile.scanner.urls import Address, address_of, parse_listen_url

log = logging.getLogger(__name__)

_FD_SIZE = array.array("i").itemsize


class FaultProxy:
    def __init__(self, upstream_url: str, fault: Fault | None = None) -> None:
        self.upstream: Address = address_of(upstream_url)
        self._switch = FaultSwitch(fault)

    @property
    def fault(self) -> Fault | None:
        return self._switch.fault

    def set_fault(self, fault: Fault | None) -> None:
        log.info("proxy fault: %s", fault or "none")
        self._switch.set(fault)

    async def serve(self, listen_url: str, *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `started()` with the bound listen URL."""
        address = parse_listen_url(listen_url)

        async def handler(stream: trio.SocketStream) -> None:
            await self._handle(stream, address.is_unix)

        await serve_switchable(address, self._switch, handler, task_status=task_status)

    async def _handle(self, client: trio.SocketStream, unix: bool) -> None:
        fault = self._switch.fault
        if fault is not None and fault.kind == "reset":
            reset(client)
            return
        async with client:
            try:
                upstream = await connect(self.upstream)
            except OSError as err:
                log.debug("proxy: upstream %s unreachable: %s", self.upstream, err)
                return
            async with upstream, trio.open_nursery() as nursery:
                pass_fds = unix and self.upstream.is_unix
                nursery.start_soon(self._forward_up, client, upstream, pass_fds, nursery)
                nursery.start_soon(self._forward_down, upstream, client, nursery)

    async def _forward_up(self, client: trio.SocketStream, upstream: trio.SocketStream,
                          pass_fds: bool, nursery: trio.Nursery) -> None:
        try:
            while True:
                fds: list[int] = []
                if pass_fds:
                    data, anc, _flags, _addr = await client.socket.recvmsg(
                        65536, socket.CMSG_SPACE(8 * _FD_SIZE))
                    for level, kind, payload in anc:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            arr = array.array("i")
                            arr.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
                            fds.extend(arr)
                else:
                    data = await client.receive_some(65536)
                if not data:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                             OSError):
                        await upstream.send_eof()
                    return
                fault = self._switch.fault
                if fault is not None and fault.kind in ("refuse", "reset"):
                    # A request on a connection opened before the fault (clients keep
                    # idle clamd sessions) meets the fault a new connection would.
                    for fd in fds:
                        os.close(fd)
                    if fault.kind == "reset":
                        reset(client)
                    nursery.cancel_scope.cancel()
                    return
                try:
                    if fds:
                        anc_out = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", fds).tobytes())]
                        sent = await upstream.socket.sendmsg([data], anc_out)
                        if sent < len(data):
                            await upstream.send_all(data[sent:])
                    else:
                        await upstream.send_all(data)
                finally:
                    for fd in fds:
                        os.close(fd)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()

    async def _forward_down(self, upstream: trio.SocketStream, client: trio.SocketStream,
                            nursery: trio.Nursery) -> None:
        try:
            while True:
                data = await upstream.receive_some(65536)
                fault = self._switch.fault
                if not data:
                    break
                if fault is None:
                    await client.send_all(data)
                elif fault.kind == "blackhole":
                    continue
                elif fault.kind == "delay":
                    await trio.sleep(fault.delay)
                    await client.send_all(data)
                elif fault.kind == "garbage":
                    await client.send_all(GARBAGE)
                    break
                elif fault.kind == "oversize":
                    await client.send_all(OVERSIZE)
                    break
                elif fault.kind == "truncate":
                    await client.send_all(data[: len(data) // 2])
                    break
                elif fault.kind == "trickle":
                    for i in range(len(data)):
                        await client.send_all(data[i:i + 1])
                        await trio.sleep(TRICKLE_INTERVAL)
                elif fault.kind == "reset":
                    reset(client)
                    break
                else:
                    await client.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        if self._switch.fault is not None and self._switch.fault.kind == "blackhole":
            await trio.sleep_forever()  # never answer, even the close
        nursery.cancel_scope.cancel()
