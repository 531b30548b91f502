"""The typer application object, its sub-apps and the shared plumbing.

Command modules (`vfile/cli/cmd_*.py`) import `app` or a sub-app from here and
register their commands; `vfile/cli/__init__.py` imports them all. Commands
stay thin: parse options, call library code, map `UserError` to an exit code.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, ParamSpec, TypeVar

import typer

from vfile.errors import Exit, UserError

P = ParamSpec("P")
T = TypeVar("T")

# No Rich markup: help texts show literal "[default: …]" and paths with brackets.
app = typer.Typer(
    rich_markup_mode=None,
    name="vfile",
    help="vfile: a fail-safe scanning filter. Mirrors a directory through FUSE, "
    "scans files on open and after write, and journals what it cannot scan.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
)
appliance_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True,
    help="Run the built-in scan appliance or a fault-injection proxy.")
journal_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                          help="Inspect and manage the deferred-scan journal.")
quarantine_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                             help="Inspect and manage quarantined files.")
app.add_typer(appliance_app, name="appliance")
app.add_typer(journal_app, name="journal")
app.add_typer(quarantine_app, name="quarantine")

# Shared option definitions, so help text stays the same across commands.
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True,
                                      help="More log output (repeat for debug).")]
StateDir = Annotated[str | None, typer.Option(
    "--state-dir", help="State directory holding the journal (default: derived from the "
    "mountpoint under /var/lib/vfile/).")]


def setup_logging(verbose: int = 0, fmt: str = "plain", *, queued: bool = False) -> None:
    """Log to stderr at the level -v asks for, as plain text or JSON lines
    (vfile.observe.logfmt). `queued` (a mount server): lines are written by a thread
    (vfile.observe.logqueue)."""
    from vfile.observe.logfmt import formatter

    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    if queued:
        from vfile.observe import logqueue

        logqueue.install(handler, level)
        return
    logging.basicConfig(level=level, handlers=[handler])


def fail(err: UserError) -> typer.Exit:
    """Print a user error as one line and return the Exit to raise."""
    typer.echo(f"vfile: {err.message}", err=True)
    return typer.Exit(int(err.exit_code))


def user_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn a `UserError` escaping a command into one line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            raise fail(err) from None

    return wrapper


def run_async(fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Run an `async def` command under `trio.run`, mapping `UserError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        import trio  # per command: `vfile version`, `status` and `quiesce` never load it

        async def main() -> T:
            return await fn(*args, **kwargs)

        try:
            return trio.run(main)
        except UserError as err:
            raise fail(err) from None

    return wrapper


__all__ = ["Exit", "UserError", "app", "appliance_app", "journal_app", "quarantine_app",
           "run_async", "setup_logging", "user_errors"]
