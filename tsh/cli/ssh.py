"""`tsh ssh`: run OpenSSH's ssh to a node through the proxy."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer


def ssh(
    destination: str = typer.Argument(..., metavar="[LOGIN@]HOST"),
    command: Optional[List[str]] = typer.Argument(None, metavar="[COMMAND]..."),
    port: Optional[int] = typer.Option(
        None, "-p", "--port", help="Node SSH port (default 3022; 22 for OpenSSH nodes)."
    ),
    login: Optional[str] = typer.Option(None, "-l", "--login", help="Remote login."),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", envvar="TELEPORT_CLUSTER", show_envvar=False,
        help="Cluster of the node, root or leaf (default: the profile's; env TELEPORT_CLUSTER).",
    ),
    proxy: Optional[str] = typer.Option(
        None, "--proxy", metavar="HOST[:PORT]", help="Profile to use (default: the current one)."
    ),
    forward_agent: bool = typer.Option(
        False, "-A", "--forward-agent", help="Forward your ssh-agent to the node."
    ),
    local: Optional[List[str]] = typer.Option(None, "-L", help="Local port forwarding (as ssh -L)."),
    remote: Optional[List[str]] = typer.Option(
        None, "-R", help="Remote port forwarding (as ssh -R)."
    ),
    dynamic: Optional[str] = typer.Option(None, "-D", help="Dynamic forwarding (as ssh -D)."),
    no_command: bool = typer.Option(False, "-N", help="Do not run a remote command."),
    tty: bool = typer.Option(False, "-t", help="Force a terminal on the node."),
    no_tty: bool = typer.Option(False, "-T", help="Never allocate a terminal."),
    options: Optional[List[str]] = typer.Option(
        None, "-o", metavar="OPTION", help="OpenSSH option, passed to ssh as given."
    ),
    no_reuse: bool = typer.Option(
        False, "--no-reuse", help="Log in to the proxy alone (no shared proxy connection)."
    ),
) -> None:
    """Run OpenSSH's ssh on a node through the proxy (with your agent forwarded to the proxy)."""
    from .._exceptions import UsageError
    from .._openssh.argv import SSHRequest
    from .._openssh.binary import plan_ssh, run_explained
    from .._store.store import ProfileStore
    from ._relogin import terminal_relogin
    from ._rotation import SSH_FAILED, explain_failure

    if tty and no_tty:
        raise UsageError("-t and -T cannot be used together")
    request = SSHRequest(
        port=port,
        login=login,
        cluster=cluster,
        forward_agent=forward_agent,
        local_forwards=tuple(local or ()),
        remote_forwards=tuple(remote or ()),
        dynamic_forward=dynamic,
        no_command=no_command,
        tty=True if tty else (False if no_tty else None),
        options=tuple(options or ()),
    )
    remote_command = tuple(command or ())
    if remote_command[:1] == ("--",):
        # click keeps a "--" that follows HOST; ssh drops it, and so do we.
        remote_command = remote_command[1:]
    store = ProfileStore()

    def run() -> tuple[int, str]:
        argv = plan_ssh(store, proxy, request, destination, remote_command,
                        terminal_relogin(), hop_errors=True, reuse=not no_reuse)
        sys.stdout.flush()
        return run_explained(argv), argv[0]

    status, ssh_path = run()
    if status == SSH_FAILED:  # OpenSSH's own error: was it a CA rotation?
        status = explain_failure(store, proxy, request, destination, ssh_path,
                                 lambda: run()[0])
    if status:
        raise typer.Exit(status)
