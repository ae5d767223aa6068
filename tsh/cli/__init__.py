"""The `tsh` command line: a thin typer layer over the tsh library.

One module per subcommand, each a small action that parses options, calls the
library and renders the result. Modules here import only typer and the
standard library at import time; the library's heavy dependencies (asyncssh,
httpx, keyring) are imported inside the actions that use them, so that
`tsh version`, `tsh status` and `tsh config` start fast.
"""

from __future__ import annotations

import os
import sys

import typer

from .._exceptions import TshError
from . import config, login, logout, proxy, scp, ssh, status, version

app = typer.Typer(
    name="tsh",
    help="Log in to a Teleport-style proxy and use OpenSSH through it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """Log in to a Teleport-style proxy and use OpenSSH through it."""


app.command("version", help="Print the client version.")(version.version)
app.command("login", help="Log in to a proxy: certificates on disk and in the ssh-agent.")(
    login.login
)
app.command("status", help="Show the profiles you are logged in with.")(status.status)
app.command("logout", help="Remove keys and certificates (one user, or everything).")(
    logout.logout
)
app.command("config", help="Print an OpenSSH configuration for the proxy's clusters.")(
    config.config
)
app.command(
    "ssh",
    help="Run OpenSSH's ssh on a node through the proxy.",
    context_settings={"allow_interspersed_args": False},
)(ssh.ssh)
app.command("scp", help="Copy files to or from a node with OpenSSH's scp.")(scp.scp)
app.add_typer(proxy.app, name="proxy")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status instead of raising.

    Library errors and bad usage become one line on stderr and their exit
    code; an unexpected exception too (``TSH_DEBUG=1`` re-raises it).
    """
    try:
        # Without standalone mode click returns (not raises) a typer.Exit's code.
        rc = app(args=argv, prog_name="tsh", standalone_mode=False)
    except TshError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 1
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
    return rc if isinstance(rc, int) else 0
