"""`tsh proxy ssh`: the ProxyCommand helper that `tsh config` writes into ssh_config."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="proxy",
    help="Run local proxies for other programs.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("ssh")
def ssh(
    target: str = typer.Argument(..., metavar="[USER@]HOST:PORT"),
    cluster: str | None = typer.Option(
        None, "--cluster",
        help="Cluster of the node, root or leaf (default: TELEPORT_CLUSTER, else the root).",
    ),
    proxy: str | None = typer.Option(
        None, "--proxy", metavar="HOST[:PORT]", help="Profile to use (default: the current one)."
    ),
    no_reuse: bool = typer.Option(
        False, "--no-reuse", help="Log in to the proxy alone (no shared proxy connection)."
    ),
) -> None:
    """Connect stdin/stdout to a node's SSH port through the proxy (for ProxyCommand).

    Only the node's SSH bytes go to stdout; messages go to stderr.
    """
    from .._proxy.command import proxy_ssh

    status = proxy_ssh(target, cluster=cluster, proxy=proxy, reuse=not no_reuse)
    if status:
        raise typer.Exit(status)
