"""The `tsh` command line: a thin typer layer over the tsh library.

One module per subcommand, each a small action that parses options, calls the
library and renders the result (the typer application is assembled in
``_app``). Modules here import only typer and the standard library at import
time; the library's heavy dependencies (asyncssh, httpx, keyring) are imported
inside the actions that use them, so that `tsh version`, `tsh status` and
`tsh config` start fast.

One command skips typer: ``tsh proxy ssh`` as `tsh config` writes it, which
OpenSSH runs for every connection through the generated configuration, so its
start-up is part of every connection's set-up time (see ``_hotpath``). Any other
spelling of it (help, a bad option) still goes through typer.
"""

from __future__ import annotations

import os
import sys

from .._exceptions import NotLoggedInError, ProxyTLSError, TshError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status instead of raising.

    Library errors and bad usage become one line on stderr and their exit
    code; an unexpected exception too (``TSH_DEBUG=1`` re-raises it).

    Without ``argv`` (the process's own command line: the ``tsh`` script,
    ``python -m tsh``), the process is about to exit: see :func:`_before_exit`.
    """
    try:
        return _main(argv)
    finally:
        if argv is None:
            _before_exit()


def _before_exit() -> None:
    """Spare the interpreter's last garbage collections over every object still alive.

    At exit CPython collects cyclic garbage among all live objects, module by
    module: with asyncssh, cryptography, grpclib and protobuf loaded (`tsh ls`,
    `tsh clusters`, `tsh login`) that costs more CPU than the command's own call.
    Frozen objects are skipped by the collector and nothing else changes: atexit
    handlers, stream flushing and the exit status are as before, and memory goes
    back to the system with the process. Every connection is closed by then
    (each command's ``asyncio.run`` has returned).
    """
    import gc

    gc.freeze()


def _main(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:2] == ["proxy", "ssh"] and os.environ.get("TSH_HOP_ERRORS"):
        _stderr_to(os.environ["TSH_HOP_ERRORS"])  # `tsh ssh` shows it after ssh's own lines
    try:
        from ._hotpath import run_hot

        rc = run_hot(args)
        return rc if rc is not None else _run_typer(args)
    except TshError as e:
        print(f"error: {e}{_cli_hint(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # a file or socket tsh could not use (permissions, full disk, ...)
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:
        # Click's own errors (bad usage) know how to word themselves; typer
        # vendors click, so they are recognised by that method, not by class.
        message = getattr(e, "format_message", None)
        if message is not None:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
            if message():  # empty after "no arguments: here is the help"
                print(f"error: {message()}{hint}", file=sys.stderr)
            return int(getattr(e, "exit_code", 2))
        if os.environ.get("TSH_DEBUG"):
            raise
        print(
            f"error: internal error: {type(e).__name__}: {e} (TSH_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _cli_hint(error: Exception) -> str:
    """What to type next, in this command line's words (the library names no flags)."""
    proxy = getattr(error, "proxy", None)
    if isinstance(error, NotLoggedInError) and proxy:
        return f"; run: tsh login --proxy={proxy}"
    if isinstance(error, ProxyTLSError) and error.verification:
        return " (or use --insecure in test setups)"
    return ""


def _stderr_to(path: str) -> None:
    """Append this process's stderr to ``path`` (private, made by `tsh ssh`); keep it if that fails."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    os.dup2(fd, 2)
    os.close(fd)


def _run_typer(args: list[str]) -> int:
    import typer

    from . import completion
    from ._app import app

    completion.prepare()
    if args[:1] == ["config"]:
        from .config import spell_update_path

        args = spell_update_path(args)
    try:
        # Without standalone mode click returns (not raises) a typer.Exit's code.
        rc = app(args=args, prog_name="tsh", standalone_mode=False)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) else 0
