"""What a mount was asked for: the one options record the CLI, the mount and the service share.

A leaf module (no vfile imports), so the mount runner and the scanning service
both depend on it instead of on each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MountOptions:
    source: str
    mountpoint: str
    #: let users other than the mounting one use the mount (-o allow_other).
    allow_other: bool = False
    #: the kernel's writeback cache (see bench/passthrough.py for why it is on).
    writeback: bool = True
    #: extended attributes through the mount (-o noxattr: off). Off, the kernel stops
    #: asking for security.capability on every write(2): small writes get much faster
    #: (README, Limitations), and getxattr/setxattr through the mount fail EOPNOTSUPP.
    xattr: bool = True
    verbose: int = 0
    #: scan through appliances (False: a plain passthrough, for comparison)
    scan: bool = True
    config: str | None = None
    appliances: tuple[str, ...] = ()
    fail_mode: str | None = None
    timeout: float | None = None
    state_dir: str | None = None
    #: signature directory for the embedded built-in appliance
    signatures: str | None = None
    #: serve Prometheus metrics on this HOST:PORT (a bare PORT: loopback); None: off
    metrics: str | None = None
    #: append one JSON line per verdict and action to this file; None: off
    audit_log: str | None = None
    #: "plain" or "json" (one JSON object per log line)
    log_format: str = "plain"
    #: O_PATH descriptors kept open for known inodes (None: [mount] fd_cache, else
    #: vfile.passthrough.fdcache.default_capacity of the descriptor limit)
    fd_cache: int | None = None
    #: seconds the kernel may keep a name's entry and a file's attributes without asking
    #: (None: vfile.passthrough.opsbase.ENTRY_TIMEOUT); longer is faster, and changes made
    #: to the source behind the mount's back are seen that much later
    cache_timeout: float | None = None
