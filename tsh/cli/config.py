"""`tsh config`: print (or install) the OpenSSH configuration for the proxy."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ._output import print_warnings


def config(
    proxy: str | None = typer.Option(
        None, "--proxy", metavar="HOST[:PORT]", help="Profile to use (default: the current one)."
    ),
    port: int | None = typer.Option(
        None, "-p", "--port", help="SSH port of the nodes (default 3022)."
    ),
    login: str | None = typer.Option(
        None, "-l", "--login", help="Remote login to put into the configuration as User."
    ),
    proxy_command: str = typer.Option(
        "tsh",
        "--proxy-command",
        metavar="tsh|openssh",
        help="ProxyCommand form: 'tsh' (tsh proxy ssh) or 'openssh' (plain ssh, no Python).",
    ),
    no_reuse: bool = typer.Option(
        False,
        "--no-reuse",
        help="Every connection logs in to the proxy itself (no shared proxy connection).",
    ),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Only this cluster's block (default: root and every leaf)."
    ),
    update: bool = typer.Option(
        False,
        "--update",
        help="Write into ~/.ssh/config (--update=PATH: into PATH) instead of printing.",
    ),
    update_file: Path | None = typer.Option(  # noqa: B008 (typer's idiom)
        None, "--update-file", metavar="PATH", help="The same as --update=PATH."
    ),
) -> None:
    """Print an OpenSSH client configuration for the proxy's clusters.

    Append it to ~/.ssh/config (`tsh config >> ~/.ssh/config`), or let
    `--update` replace the block tsh wrote before; `tsh login` then keeps
    that block's clusters current (opt out: `tsh login --no-update-ssh-config`
    or TELEPORT_UPDATE_SSH_CONFIG=no). Stdout carries only the configuration.
    """
    # Imported here: the CLI module must not pay for them at start-up.
    from .._openssh.config_file import openssh_version, record_update, ssh_config, update_ssh_config
    from .._store.store import ProfileStore

    store = ProfileStore()
    profile = store.select(proxy)
    text = ssh_config(
        profile,
        store,
        port=port,
        login=login,
        proxy_command=proxy_command,
        ssh_version=openssh_version(),
        reuse=not no_reuse,
        cluster=cluster,
    )
    _warn_if_expired(profile.valid_before)
    if not update and update_file is None:
        sys.stdout.write(text)
        return
    target = (update_file or Path.home() / ".ssh" / "config").expanduser()
    changed, backup = update_ssh_config(target, text, profile.proxy_host)
    # So that `tsh login` can keep this block's cluster list current.
    record_update(
        store, profile, target, port=port, login=login, proxy_command=proxy_command, cluster=cluster
    )
    if not changed:
        print(f"{target} is up to date.", file=sys.stderr)
    elif backup is None:
        print(f"Wrote {target}.", file=sys.stderr)
    else:
        print(f"Updated {target} (previous version: {backup}).", file=sys.stderr)


def spell_update_path(args: list[str]) -> list[str]:
    """``--update=PATH`` as ``--update-file=PATH`` (for ``args`` of ``tsh config``).

    Click has no option that is a flag alone and takes a value after ``=``,
    so the one spelling is turned into the other before typer parses.
    """
    out: list[str] = []
    for i, word in enumerate(args):
        if word == "--":
            return out + args[i:]
        name, eq, value = word.partition("=")
        out.append(f"--update-file={value}" if name == "--update" and eq and value else word)
    return out


def _warn_if_expired(valid_before: int) -> None:
    import time

    if valid_before and valid_before < time.time():
        print_warnings(["the certificate has expired; run tsh login before using ssh"])
