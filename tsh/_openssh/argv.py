"""Command lines for OpenSSH's `ssh` and `scp` through the proxy (pure, no I/O).

`tsh ssh` and `tsh scp` replace themselves with OpenSSH, so no Python process
stays in the data path. What they hand OpenSSH:

- the profile's known_hosts (``@cert-authority`` lines for ``*.<cluster>``),
  with ``HostKeyAlias <host>.<cluster>`` so a node typed as ``node1`` is
  checked against the cluster's host CA, and ``StrictHostKeyChecking yes`` so a
  node without a host certificate is refused instead of trusted on first use;
- the profile's key and certificate (``IdentitiesOnly`` with the public key
  when the private key lives only in the agent, ``-k only``);
- a ProxyCommand that is plain OpenSSH again: ``ssh -s`` to the proxy's SSH
  port opening ``proxy:<host>:%p@<cluster>`` (port ``0`` when none is given:
  the node's registered port, as for real tsh), with the agent forwarded to the
  proxy (a recording proxy logs in to the node with it). When the user's agent
  does not hold the profile's certificate, that forwarded agent would be
  useless to a recording proxy, so the caller passes ``via_tsh`` and the
  ProxyCommand is `tsh proxy ssh`, which forwards a private agent instead.

Every name is validated (tsh._core.names) before it is put on a command line, and
the ProxyCommand, which OpenSSH runs through the user's shell, quotes every
word. User input never passes through a shell otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .._core.addr import FALLBACK_WEB_PORT, split_host_port
from .._core.names import shell_word, validate_cluster_name, validate_host, validate_login
from .._core.profile import Profile
from .._exceptions import UsageError
from .._store.layout import ProfilePaths
from .config import tsh_proxy_command
from .hop import identity_options, proxy_hop_argv

__all__ = [
    "SSHRequest",
    "Remote",
    "parse_destination",
    "parse_scp_arg",
    "proxy_command",
    "ssh_argv",
    "scp_remote_host",
    "scp_argv",
]


@dataclass(frozen=True)
class SSHRequest:
    """What `tsh ssh` was asked to do, besides the destination."""

    port: int | None = None
    login: str | None = None
    cluster: str | None = None
    forward_agent: bool = False
    local_forwards: Sequence[str] = ()
    remote_forwards: Sequence[str] = ()
    dynamic_forward: str | None = None
    no_command: bool = False
    #: True for -t, False for -T, None to let ssh decide.
    tty: bool | None = None
    options: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class Remote:
    """One ``[LOGIN@]HOST:PATH`` argument of scp (``host`` None: a local path)."""

    login: str | None
    host: str | None
    path: str


def _check_arg(kind: str, value: str) -> None:
    # Caught before validation so the message names the real problem: OpenSSH
    # would read a leading "-" as an option.
    if value.startswith("-"):
        raise UsageError(f"invalid {kind} {value!r}: must not start with '-'")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"invalid {kind} {value!r}: whitespace or control characters")


def parse_destination(text: str, login: str | None = None) -> tuple[str | None, str]:
    """Split ``[LOGIN@]HOST`` and validate both parts; ``login`` is the -l value.

    A login in ``text`` wins over ``login``, as with ssh.

    Raises:
        UsageError: an empty, option-like or unsafe host or login.
    """
    if "@" in text:
        login, _, text = text.rpartition("@")
    _check_arg("host", text)
    if login is not None:
        _check_arg("login", login)
        validate_login(login)
    return login, validate_host(text, "host")


def parse_scp_arg(text: str) -> Remote:
    """Classify an scp argument the way scp does: ``[LOGIN@]HOST:PATH`` or a local path.

    Like scp, a colon only makes a remote argument when no ``/`` comes before it.
    """
    colon = _remote_colon(text)
    if colon is None:
        return Remote(None, None, text)
    destination = text[:colon]
    if destination.startswith("["):
        destination = destination[1:-1]
    login, host = parse_destination(destination)
    return Remote(login, host, text[colon + 1 :])


def _remote_colon(text: str) -> int | None:
    if text.startswith("["):  # [v6addr]:path
        end = text.find("]")
        return end + 1 if end != -1 and text[end + 1 : end + 2] == ":" else None
    for i, c in enumerate(text):
        if c == "/":
            return None
        if c == ":":
            return i if i > 0 else None
    return None


def proxy_command(
    profile: Profile, paths: ProfilePaths, host: str, cluster: str, registered_port: bool = False
) -> str:
    """The ProxyCommand line reaching ``host`` through the proxy's ``proxy:`` subsystem.

    ``%r`` (the node login) and ``%p`` (the node port) are left for OpenSSH to
    fill in; everything else is literal and shell-quoted. ``registered_port``:
    port ``0`` instead of ``%p`` (the node's registered port, docs/protocol.md §17.3).
    """
    # OpenSSH expands %r and %p before the user's shell (maybe fish or csh)
    # reads the line; every word, those tokens included, is single-quoted.
    port = "0" if registered_port else "%p"
    return " ".join(map(shell_word, proxy_hop_argv(profile, paths, host, cluster, port=port)))


#: The environment variable naming the file the hop's messages go to, so that
#: `tsh ssh` can show them after ssh's own (see tsh._openssh.binary.run_explained).
HOP_ERRORS_ENV = "TSH_HOP_ERRORS"
#: Runs the all-OpenSSH hop with its stderr appended to $TSH_HOP_ERRORS.
_HOP_ERRORS_WRAPPER = ("sh", "-c", 'exec "$@" 2>>"$' + HOP_ERRORS_ENV + '"', "tsh-hop")


def _common(
    profile: Profile,
    paths: ProfilePaths,
    host: str,
    cluster: str,
    via_tsh: Sequence[str],
    hop_errors: bool = False,
    reuse: bool = True,
    port: int | None = None,
) -> list[str]:
    # The cluster (--cluster) ends up in HostKeyAlias and in the ProxyCommand shell line.
    validate_cluster_name(cluster)
    alias = host if host.lower().endswith("." + cluster.lower()) else f"{host}.{cluster}"
    # No port: the ProxyCommand asks for port 0, the node's registered port, as
    # real tsh does (OpenSSH refuses `-p 0`, so it cannot come through %p).
    registered = port is None
    if via_tsh:
        proxy_host, proxy_port = split_host_port(profile.web_proxy_addr, FALLBACK_WEB_PORT)
        command = tsh_proxy_command(via_tsh, cluster, proxy_host, proxy_port, reuse, registered)
    else:
        command = proxy_command(profile, paths, host, cluster, registered)
        if hop_errors:  # `tsh proxy ssh` reads $TSH_HOP_ERRORS itself
            command = " ".join([*map(shell_word, _HOP_ERRORS_WRAPPER), command])
    return [
        *identity_options(profile, paths),
        "-o", f"HostKeyAlias={alias}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"ProxyCommand={command}",
    ]  # fmt: skip


def ssh_argv(
    profile: Profile,
    paths: ProfilePaths,
    request: SSHRequest,
    destination: str,
    command: Sequence[str] = (),
    ssh: str = "ssh",
    via_tsh: Sequence[str] = (),
    hop_errors: bool = False,
    reuse: bool = True,
) -> list[str]:
    """The full ``ssh`` command line for `tsh ssh` (argv[0] is ``ssh``).

    The user's own ``-o`` options come first: for each keyword OpenSSH keeps
    the first value it sees, so they override ours. ``via_tsh`` (how to run
    tsh, e.g. ``("/usr/bin/tsh",)``) makes the ProxyCommand `tsh proxy ssh`.
    ``hop_errors``: the hop's messages go to the file ``$TSH_HOP_ERRORS``
    names (which must then be set). ``reuse`` False: a `tsh proxy ssh`
    ProxyCommand gets ``--no-reuse``.

    Raises:
        UsageError (InvalidNameError): an unsafe destination, login or cluster.
    """
    login, host = parse_destination(destination, request.login)
    cluster = request.cluster or profile.cluster
    argv = [ssh]
    for option in request.options:
        argv += ["-o", option]
    argv += _common(profile, paths, host, cluster, via_tsh, hop_errors, reuse, request.port)
    if request.port is not None:
        argv += ["-p", str(request.port)]
    if login:
        argv += ["-l", login]
    argv.append("-A" if request.forward_agent else "-a")
    for spec in request.local_forwards:
        argv += ["-L", spec]
    for spec in request.remote_forwards:
        argv += ["-R", spec]
    if request.dynamic_forward:
        argv += ["-D", request.dynamic_forward]
    if request.no_command:
        argv.append("-N")
    if request.tty is not None:
        argv.append("-t" if request.tty else "-T")
    return [*argv, "--", host, *command]


def scp_remote_host(args: Sequence[str]) -> str:
    """The one node that ``args`` (SOURCE... TARGET) copy to or from.

    Raises:
        UsageError: fewer than two arguments, no remote argument, more than one
            remote host, or an unsafe host or login.
    """
    if len(args) < 2:
        raise UsageError("tsh scp needs at least one SOURCE and a TARGET")
    hosts = {r.host for r in map(parse_scp_arg, args) if r.host is not None}
    if not hosts:
        raise UsageError("nothing to copy through the proxy: no [LOGIN@]HOST:PATH argument")
    if len(hosts) > 1:
        raise UsageError("tsh scp copies between this machine and one node at a time")
    return hosts.pop()


def scp_argv(
    profile: Profile,
    paths: ProfilePaths,
    args: Sequence[str],
    *,
    port: int | None = None,
    cluster: str | None = None,
    recursive: bool = False,
    preserve: bool = False,
    scp: str = "scp",
    via_tsh: Sequence[str] = (),
    hop_errors: bool = False,
    reuse: bool = True,
) -> list[str]:
    """The full ``scp`` command line for `tsh scp` (SOURCE... TARGET in ``args``).

    ``hop_errors``, ``reuse``: as for :func:`ssh_argv`.

    Raises:
        UsageError: see scp_remote_host.
    """
    host = scp_remote_host(args)
    argv = [scp]
    if recursive:
        argv.append("-r")
    if preserve:
        argv.append("-p")
    argv += _common(profile, paths, host, cluster or profile.cluster, via_tsh, hop_errors, reuse, port)
    if port is not None:
        argv += ["-P", str(port)]
    argv += ["--", *args]
    return argv
