"""The typer application: one command per module of this package."""

from __future__ import annotations

import typer

from . import completion, config, doctor, login, logout, proxy, scp, ssh, status, version

app = typer.Typer(
    name="tsh",
    help="Log in to a Teleport-style proxy and use OpenSSH through it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        version.version()
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version,
        help="Print the client version (as `tsh version`) and exit.",
    ),
    completion_script_bash: bool = completion.SCRIPT_OPTIONS["bash"],
    completion_script_zsh: bool = completion.SCRIPT_OPTIONS["zsh"],
    completion_script_fish: bool = completion.SCRIPT_OPTIONS["fish"],
) -> None:
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
    help="Run OpenSSH's ssh on a node through the proxy.\n\n"
    "Options go before HOST; the words after it are the remote command. Put -- before "
    "HOST when it comes from elsewhere (a HOST starting with - is refused); a -- right "
    "after HOST is dropped, as ssh does.",
    options_metavar="[OPTIONS] [--]",
    context_settings={"allow_interspersed_args": False},
)(ssh.ssh)
app.command("scp", help="Copy files to or from a node with OpenSSH's scp.")(scp.scp)
app.command("doctor", help="Check the OpenSSH path step by step and say what to fix.")(
    doctor.doctor
)
app.add_typer(proxy.app, name="proxy")
