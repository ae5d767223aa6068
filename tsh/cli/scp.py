"""`tsh scp`: run OpenSSH's scp to or from a node through the proxy."""

from __future__ import annotations

from typing import List, Optional

import typer


def scp(
    paths: List[str] = typer.Argument(..., metavar="SOURCE... TARGET"),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Copy directories."),
    port: Optional[int] = typer.Option(
        None, "-P", "--port", help="Node SSH port (default 3022; 22 for OpenSSH nodes)."
    ),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", envvar="TELEPORT_CLUSTER", show_envvar=False,
        help="Cluster of the node, root or leaf (default: the profile's; env TELEPORT_CLUSTER).",
    ),
    proxy: Optional[str] = typer.Option(
        None, "--proxy", metavar="HOST[:PORT]", help="Profile to use (default: the current one)."
    ),
    preserve: bool = typer.Option(
        False, "-p", "--preserve", help="Keep modification times and modes."
    ),
    no_reuse: bool = typer.Option(
        False, "--no-reuse", help="Log in to the proxy alone (no shared proxy connection)."
    ),
) -> None:
    """Copy files to or from a node with OpenSSH's scp ([LOGIN@]HOST:PATH as in scp)."""
    from .._openssh.binary import plan_scp, run_explained
    from .._store.store import ProfileStore
    from ._relogin import terminal_relogin
    from ._rotation import SSH_FAILED, explain_failure, first_remote

    store = ProfileStore()

    def run() -> int:
        argv = plan_scp(
            store, proxy, paths, port=port, cluster=cluster, recursive=recursive,
            preserve=preserve, relogin=terminal_relogin(), hop_errors=True,
            reuse=not no_reuse,
        )  # fmt: skip
        return run_explained(argv)

    status = run()
    destination = first_remote(paths)
    if status == SSH_FAILED and destination is not None:  # was it a CA rotation?
        from .._openssh.argv import SSHRequest
        from .._openssh.binary import find_binary

        request = SSHRequest(port=port, cluster=cluster)
        status = explain_failure(store, proxy, request, destination, find_binary("ssh"), run)
    if status:
        raise typer.Exit(status)
