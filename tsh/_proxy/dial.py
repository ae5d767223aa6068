"""How the hop reaches the proxy's SSH service: the dial seam (pure).

Three ways (a :data:`tsh._types.DialMode`, docs/protocol.md §18):

- ``tcp``: plain TCP to the proxy's SSH port (``ssh -p PORT HOST``);
- ``tls``: TLS routing (single-port proxies). TLS to the *web* port with ALPN
  ``teleport-proxy-ssh``, SNI the proxy host, the certificate checked against
  the cluster's host CA (``cas/<cluster>.pem``), not the web roots. OpenSSH
  cannot speak TLS, so the hop's ssh gets tsh's own tunnel as its
  ProxyCommand (``python -m tsh._proxy.tunnel``). Not ``openssl s_client``
  (which `tsh config`'s all-OpenSSH form uses, :func:`openssl_words`): that
  sends one 8 KiB record per write, the tunnel up to sixteen 16 KiB records
  in one, which the proxy decrypts in far fewer reads; it starts in parallel
  with ssh, so the set-up is no slower (benchmarks/proxy_ssh.py), and it
  names a proxy that ignores the ALPN itself;
- ``upgrade``: TLS routing behind an L7 load balancer that terminates TLS
  and drops ALPN: the same inner TLS inside ``GET /webapi/connectionupgrade``
  (WebSocket, or the legacy ``Upgrade: alpn``), which only tsh's tunnel does.

Each is a :class:`Dial` whose ``options`` tell OpenSSH's ssh how to get
there, so the supervisor, the retry and replay, and the agent code stay as
they are for every mode, and the SSH exchange with the proxy (certificate,
host CA, agent forwarding, ``proxy:`` subsystem) is the same bytes.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple

from .._core.addr import FALLBACK_WEB_PORT, SSH_PROXY_PORT, split_host_port
from .._core.names import validate_host, validate_path
from .._exceptions import InvalidNameError

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._core.profile import Profile
    from .._store.layout import ProfilePaths
    from .._types import DialMode

__all__ = [
    "ALPN_PROXY_SSH",
    "UPGRADE_ENV",
    "UPGRADE_MODE_ENV",
    "Dial",
    "command_line",
    "conn_upgrade_override",
    "dial_for",
    "tls_route",
    "openssl_words",
    "ssh_dial_words",
    "tunnel_words",
]

#: The ALPN value that carries raw SSH to the proxy's SSH server.
ALPN_PROXY_SSH = "teleport-proxy-ssh"
#: Teleport's override of the L7 load balancer detection: ``true``/``false``,
#: or per address ``host:port=yes,other:443=no`` (``,`` or ``;`` between).
UPGRADE_ENV = "TELEPORT_TLS_ROUTING_CONN_UPGRADE"
#: ``legacy``: the ``Upgrade: alpn`` upgrade instead of WebSocket.
UPGRADE_MODE_ENV = "TELEPORT_TLS_ROUTING_CONN_UPGRADE_MODE"

_TRUE = ("1", "t", "true", "y", "yes", "on")
_FALSE = ("0", "f", "false", "n", "no", "off")
#: Besides what validate_path refuses: what double quotes leave special in the
#: shells OpenSSH runs a ProxyCommand with (csh's ``!``).
_NOT_IN_DOUBLE_QUOTES = set('"$`\\!%')


class Dial(namedtuple("_DialFields", ["mode", "host", "port", "options", "upgrade"], defaults=(None,))):
    """Where and how the hop connects: ``mode`` (a :data:`tsh._types.DialMode`),
    the host and port OpenSSH's ssh dials, extra ``-o`` words for it, and for
    mode ``upgrade`` which connection upgrade (``websocket`` or ``legacy``)."""

    __slots__ = ()
    mode: DialMode
    upgrade: str | None


def conn_upgrade_override(value: str, addr: str) -> bool | None:
    """What ``$TELEPORT_TLS_ROUTING_CONN_UPGRADE`` says for the web address ``addr``.

    None: it says nothing (unset, unparsable, or only about other addresses).
    A per-address entry beats a bare value, as in Teleport.
    """
    verdict: bool | None = None
    for item in value.replace(";", ",").split(","):
        key, eq, word = item.strip().rpartition("=")
        word = word.strip().lower()
        flag = True if word in _TRUE else False if word in _FALSE else None
        if flag is None:
            continue
        if not eq:
            verdict = flag if verdict is None else verdict
        elif key.strip() == addr:
            return flag
    return verdict


def command_line(words: list[str]) -> str:
    """``words`` as a ProxyCommand line that may itself sit inside single quotes.

    Each word is double-quoted (for every shell OpenSSH may run it with);
    one that double quotes cannot hold safely is refused.

    Raises:
        InvalidNameError: such a word.
    """
    for word in words:
        if set(word) & _NOT_IN_DOUBLE_QUOTES or not word.isprintable():
            raise InvalidNameError(f"{word!r} cannot be quoted safely for a ProxyCommand")
    return " ".join(f'"{word}"' for word in words)


def openssl_words(host: str, port: int, ca_file: str, openssl: str = "openssl") -> list[str]:
    """``openssl s_client`` as a TLS-routing ProxyCommand (also `tsh config`'s openssh form).

    ``-quiet`` passes bytes through untouched (no session prints, no
    ``Q``/``R`` commands); ``-verify_return_error`` and ``-verify_hostname``
    (``-verify_ip`` for an address) make a wrong certificate fatal; only
    ``ca_file`` is trusted, not the system roots.
    """
    name_check = "-verify_ip" if ":" in host or host.replace(".", "").isdigit() else "-verify_hostname"
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    words = [openssl, "s_client", "-quiet", "-verify_quiet", "-verify_return_error",
             "-alpn", ALPN_PROXY_SSH, name_check, host, "-CAfile", ca_file, "-no-CApath",
             "-connect", target]  # fmt: skip
    # An IP literal gets no SNI, as in Go (and -noservername keeps openssl quiet about it).
    words[-2:-2] = ["-servername", host] if name_check == "-verify_hostname" else ["-noservername"]
    return words


def tunnel_words(
    host: str, port: int, ca_file: str, upgrade: str | None, python: str = sys.executable
) -> list[str]:
    """tsh's own tunnel (tsh._proxy.tunnel) as the ProxyCommand."""
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    mode = [f"--upgrade={upgrade}"] if upgrade else []
    return [python, "-m", "tsh._proxy.tunnel", *mode, addr, ca_file]


def dial_for(
    profile: Profile, paths: ProfilePaths | None = None, environ: Mapping[str, str] | None = None
) -> Dial:
    """The dial for ``profile``'s proxy (see the module docstring).

    ``paths`` is needed under TLS routing (the host CA file); ``environ``
    (default os.environ) may override the L7 load balancer detection.

    Raises:
        InvalidNameError: an unsafe proxy host, or a path that cannot be quoted.
    """
    environ = os.environ if environ is None else environ
    route = tls_route(profile, environ)
    if route is None:
        host, port = split_host_port(profile.ssh_proxy_addr, SSH_PROXY_PORT)
        return Dial("tcp", validate_host(host, "SSH proxy host"), port, ())
    assert paths is not None, "TLS routing needs the profile's paths"
    host, port = split_host_port(profile.web_proxy_addr, FALLBACK_WEB_PORT)
    host = validate_host(host, "proxy host")
    ca_file = validate_path(str(paths.tls_ca(profile.root_cluster or profile.cluster)))
    mode: DialMode = "tls" if route == "tls" else "upgrade"
    upgrade = None if route == "tls" else route
    words = tunnel_words(host, port, ca_file, upgrade)
    return Dial(mode, host, port, ("-o", f"ProxyCommand={command_line(words)}"), upgrade)


def tls_route(profile: Profile, environ: Mapping[str, str]) -> str | None:
    """How to reach ``profile``'s proxy: None (TCP to the SSH port), ``"tls"``
    (TLS routing), ``"websocket"`` or ``"legacy"`` (TLS routing through that
    connection upgrade). The environment overrides the profile's
    ``tls_routing_conn_upgrade_required`` for its web address, as in Teleport.
    """
    if not profile.tls_routing_enabled:
        return None
    host, port = split_host_port(profile.web_proxy_addr, FALLBACK_WEB_PORT)
    override = conn_upgrade_override(environ.get(UPGRADE_ENV, ""), f"{host}:{port}")
    upgrade = profile.tls_routing_conn_upgrade_required if override is None else override
    if not upgrade:
        return "tls"
    return "legacy" if environ.get(UPGRADE_MODE_ENV, "").strip().lower() == "legacy" else "websocket"


def ssh_dial_words(dial: Dial) -> tuple[list[str], str]:
    """(options, destination) of OpenSSH's ssh for ``dial``."""
    return [*dial.options, "-p", str(dial.port)], dial.host
