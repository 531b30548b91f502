"""`mount.fuse.vfile`: the mount(8) helper that makes /etc/fstab lines work.

For a line such as

    /srv/data /mnt/data fuse.vfile defaults,appliance=clamd:///run/clamav/clamd.ctl 0 0

`mount /mnt/data` and `mount -a` run ``/sbin/mount.fuse.vfile SRC MNT [-sfnv] -o OPTS``
(util-linux looks for ``mount.<fstype>`` in /sbin). This helper translates the
options into `vfile mount` flags and runs ``vfile mount`` (background mode),
which returns once the mount serves; its exit status is the helper's. Install
it with ``ln -s /path/to/venv/bin/mount.fuse.vfile /sbin/mount.fuse.vfile``.

Options: ``KEY=VALUE`` for the `vfile mount` flag ``--KEY VALUE`` (``_`` and
``-`` alike) for the keys in `VALUE_OPTIONS`; ``appliance=`` may repeat;
``allow_other`` and ``no_writeback`` pass through as ``-o``; ``verbose``
adds ``-v``. Options mount(8) and systemd use for themselves (``defaults``,
``noauto``, ``_netdev``, ``nofail``, ``x-systemd.*``, ...) are ignored.
Anything else is a usage error (exit 2), unless mount was given ``-s``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from vfile.errors import Exit, UserError

#: KEY=VALUE options and the `vfile mount` flag each becomes
VALUE_OPTIONS = {
    "appliance": "--appliance", "fail_mode": "--fail-mode", "timeout": "--timeout",
    "state_dir": "--state-dir", "config": "--config", "signatures": "--signatures",
    "log_file": "--log-file", "metrics": "--metrics", "audit_log": "--audit-log",
    "log_format": "--log-format", "cache_timeout": "--cache-timeout",
}
PASS_THROUGH = ("allow_other", "no_writeback", "noxattr")
#: mount(8)'s, the kernel's generic and systemd's options: not vfile's business
IGNORED = frozenset({
    "defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group",
    "_netdev", "nofail", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async",
    "atime", "noatime", "relatime", "strictatime", "nodiratime", "diratime", "loud",
    "silent", "lazytime", "nolazytime",
})
IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=")


def split_options(text: str) -> list[str]:
    """Options as mount(8) (libmount) reads them: split at commas outside double
    quotes; a quoted value (``state_dir="/srv/a,b"``) loses its quotes (s26: it was
    split at its comma, or kept its quotes; tests/t4_input26_test.py)."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text + ",":
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            if opt := "".join(current).strip():
                out.append(opt)
            current = []
        else:
            current.append(c)
    if quoted:
        raise UserError(f"unbalanced double quote in mount options {text!r}", Exit.USAGE)
    return out


def translate(argv: Sequence[str]) -> tuple[list[str], bool]:
    """mount(8)'s helper arguments → (`vfile mount` arguments, fake) (pure).

    ``fake`` is mount's ``-f``: check the options, mount nothing."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = verbose = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "-o":
            if not args:
                raise UserError("-o needs a value", Exit.USAGE)
            options += split_options(args.pop(0))
        elif arg.startswith("-o") and len(arg) > 2:
            options += split_options(arg[2:])
        elif arg in ("-t", "-N"):
            if args:
                args.pop(0)  # the type (fuse.vfile) / a namespace: nothing to do
        elif arg.startswith("-") and len(arg) > 1:
            for flag in arg[1:]:
                if flag not in "sfnv":
                    raise UserError(f"unknown flag -{flag}", Exit.USAGE)
            sloppy |= "s" in arg
            fake |= "f" in arg
            verbose |= "v" in arg
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UserError("usage: mount.fuse.vfile SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]",
                        Exit.USAGE)
    out = ["mount"]
    if verbose:
        out.append("-v")
    for opt in options:
        key, eq, value = opt.partition("=")
        key = key.replace("-", "_")
        if key in VALUE_OPTIONS and eq:
            out += [VALUE_OPTIONS[key], value]
        elif opt in PASS_THROUGH:
            out += ["-o", opt]
        elif opt == "verbose":
            out.append("-v")
        elif opt in IGNORED or opt.startswith(IGNORED_PREFIXES) or sloppy:
            continue
        elif opt == "ro":
            raise UserError("vfile mounts are read-write; a read-only fuse.vfile mount is "
                            "not supported", Exit.USAGE)
        else:
            known = ", ".join([*(f"{k}=" for k in VALUE_OPTIONS), *PASS_THROUGH, "verbose"])
            raise UserError(f"unknown mount option {opt!r} (vfile knows: {known})", Exit.USAGE)
    return [*out, "--", *positional], fake


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args, fake = translate(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"mount.fuse.vfile: {err.message}", file=sys.stderr)
        raise SystemExit(int(err.exit_code)) from None
    if fake:
        raise SystemExit(0)
    # A fresh interpreter: `vfile mount` starts the server and returns once it serves.
    os.execv(sys.executable, [sys.executable, "-m", "vfile", *args])
