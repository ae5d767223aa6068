"""The hop to the proxy: OpenSSH's ``ssh -s proxy:<host>:<port>@<cluster>`` (pure, no I/O).

Shared by `tsh ssh` (as an all-OpenSSH ProxyCommand) and `tsh proxy ssh` (as
the child it supervises). Kept apart from both so that `tsh proxy ssh`, which
OpenSSH starts for every connection through `tsh config`'s output, imports
only this and not the rest of the ssh command-line code.
"""

from __future__ import annotations

from .._core.addr import join_host_port
from .._core.names import validate_cluster_name, validate_host, validate_login, validate_path
from .._core.profile import Profile
from .._proxy.dial import Dial, dial_for, ssh_dial_words
from .._store.layout import ProfilePaths

__all__ = ["HOP_OPTIONS", "clean_target_host", "identity_options", "proxy_hop_argv", "subsystem_name"]

#: Options of every hop to the proxy, also in `tsh config`'s all-OpenSSH form:
#: no prompts, and the proxy must present a host certificate of tsh's CAs.
HOP_OPTIONS = ("BatchMode=yes", "StrictHostKeyChecking=yes", "GlobalKnownHostsFile=/dev/null")


def clean_target_host(host: str, proxy_host: str, cluster: str) -> str:
    """Strip a trailing ``.<proxy_host>`` and then ``.<cluster>`` (as tsh does).

    That is what lets ``ssh node1.<cluster>`` reach the node named ``node1``.
    ssh lower-cases host names, so the suffixes match case-insensitively.
    """
    for suffix in (proxy_host, cluster):
        tail = "." + suffix
        if suffix and len(host) > len(tail) and host.lower().endswith(tail.lower()):
            host = host[: -len(tail)]
    return host


def subsystem_name(host: str, port: str, cluster: str) -> str:
    """``proxy:<host>:<port>[@<cluster>]``; IPv6 hosts get brackets."""
    addr = join_host_port(host, port)
    return f"proxy:{addr}@{cluster}" if cluster else f"proxy:{addr}"


def _opt(name: str, value: str) -> list[str]:
    return ["-o", f'{name}="{value}"']


def identity_options(profile: Profile, paths: ProfilePaths) -> list[str]:
    """``-o`` options that make OpenSSH use the profile's credentials and CAs.

    The certificate is the profile cluster's for every cluster, as real tsh does.
    """
    known_hosts = validate_path(str(paths.known_hosts))
    cert = validate_path(str(paths.ssh_cert(profile.cluster)))
    opts = [
        *_opt("UserKnownHostsFile", known_hosts),
        *_opt("CertificateFile", cert),
    ]
    if profile.key_storage == "agent":
        # The private key lives only in the agent: name the public key so ssh
        # picks the agent's matching key (with its certificate) and no other.
        opts += [*_opt("IdentityFile", validate_path(str(paths.public_key)))]
        opts += ["-o", "IdentitiesOnly=yes"]
    else:
        opts += _opt("IdentityFile", validate_path(str(paths.private_key)))
    return opts


def proxy_hop_argv(
    profile: Profile,
    paths: ProfilePaths,
    host: str,
    cluster: str,
    login: str = "%r",
    port: str = "%p",
    ssh: str = "ssh",
    agent_sock: str | None = None,
    dial: Dial | None = None,
) -> list[str]:
    """OpenSSH's ``ssh`` to the proxy's SSH service, opening ``proxy:<host>:<port>@<cluster>``.

    The agent is forwarded to the proxy (a recording proxy logs in to the node
    with it); the proxy must present a host certificate from a CA in the
    profile's known_hosts. ``-F /dev/null``: the user's ssh_config (which may
    itself send ``*.<cluster>`` through tsh) plays no part in this hop, as in
    real tsh. The defaults ``%r``/``%p`` are ssh_config tokens for a ProxyCommand.

    ``agent_sock`` forwards that socket instead of ``$SSH_AUTH_SOCK``
    (``ForwardAgent <path>``, OpenSSH 8.2 and later). ``dial`` is how to
    reach the proxy (tsh._proxy.dial; by default, the profile's).
    """
    validate_cluster_name(cluster)
    dial_options, ssh_host = ssh_dial_words(dial or dial_for(profile, paths))
    proxy_host = validate_host(profile.proxy_host, "proxy host")
    node = validate_host(clean_target_host(host, proxy_host, cluster), "host")
    if login != "%r":
        validate_login(login)
    return [
        ssh,
        "-F", "/dev/null",
        *(_opt("ForwardAgent", validate_path(agent_sock)) if agent_sock else ["-o", "ForwardAgent=yes"]),
        *(word for option in HOP_OPTIONS for word in ("-o", option)),
        # The proxy's host certificate names the proxy host, not "[host]:3023".
        "-o", f"HostKeyAlias={proxy_host}",
        "-o", "ConnectTimeout=15",
        "-o", "ServerAliveInterval=30",
        *identity_options(profile, paths),
        *dial_options,
        "-l", login,
        "-s", ssh_host,
        subsystem_name(node, port, cluster),
    ]  # fmt: skip
