"""What the TCP appliance owner check (scanner/tcppeer.py, x24) costs per connection,
with N extra loopback connections open to grow the kernel's table.

    .venv/bin/python bench/peer_check.py [N]
"""

import socket
import sys
import time

from vfile.scanner.tcppeer import check_tcp_listener


def main() -> None:
    extra = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    keep = []
    for _ in range(extra + 1):
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        keep += [c, a]
    rows = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            rows += len(f.read().splitlines()) - 1
    n = 200
    t = time.perf_counter()
    for _ in range(n):
        check_tcp_listener(c)
    dt = (time.perf_counter() - t) / n
    print(f"sockets in /proc/net/tcp{{,6}}: {rows}; check per connection: {dt * 1e6:.0f} us")


if __name__ == "__main__":
    main()
