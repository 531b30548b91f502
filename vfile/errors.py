"""User-facing errors and the process exit codes they carry.

Every failure a user can cause or fix (bad path, bad config, busy mountpoint,
unreadable journal) is raised as a `UserError` with one clear message and a
documented exit code. The CLI prints the message on one line and exits with
the code; nothing else turns an exception into an exit status. The README's
"Exit codes" table lists these constants.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    #: `vfile scan`: at least one file infected (as clamdscan).
    INFECTED = 1
    #: command-line usage error, or `vfile scan`: at least one file could not be scanned.
    USAGE = 2
    #: the configuration file or an option value is invalid.
    CONFIG = 3
    #: the source directory is missing, unreadable or not a directory.
    SOURCE = 4
    #: the mountpoint is missing, not a directory, busy, or overlaps the source.
    MOUNTPOINT = 5
    #: FUSE is unavailable (no /dev/fuse, no fusermount3, not permitted).
    FUSE = 6
    #: the journal / state directory is unreadable, corrupted, foreign or newer.
    JOURNAL = 7
    #: the control plane refused the command or no live mount answers there.
    CONTROL = 8
    #: a scan appliance could not be reached or answered with an error.
    APPLIANCE = 9
    #: the mount server failed after it started (see its log).
    RUNTIME = 10


class UserError(Exception):
    """An error meant for the operator: one line of text and an exit code."""

    def __init__(self, message: str, exit_code: Exit = Exit.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
