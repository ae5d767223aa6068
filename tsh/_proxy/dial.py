"""How the hop reaches the proxy's SSH service: the dial seam (pure).

Today there is one way, plain TCP to the proxy's SSH port (``ssh -p PORT
HOST``). TLS routing (single-port proxies) will add TLS with ALPN
``teleport-proxy-ssh`` to the web port, and behind an L7 load balancer a
WebSocket upgrade before it (docs/protocol.md §1). Each is a :class:`Dial`
whose ``options`` tell OpenSSH's ssh how to get there, so the supervisor, the
retry and replay, and the agent code stay as they are for every mode.
"""

from __future__ import annotations

from collections import namedtuple

from .._core.addr import SSH_PROXY_PORT, split_host_port
from .._core.names import validate_host

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from .._core.profile import Profile
    from .._types import DialMode

__all__ = ["Dial", "dial_for", "ssh_dial_words"]


class Dial(namedtuple("_DialFields", ["mode", "host", "port", "options"])):
    """Where and how the hop connects: ``mode`` (a :data:`tsh._types.DialMode`),
    the host and port OpenSSH's ssh dials, and extra ``-o`` words for it."""

    __slots__ = ()
    mode: DialMode


def dial_for(profile: Profile) -> Dial:
    """The dial for ``profile``'s proxy: TCP to its SSH proxy address.

    Raises:
        InvalidNameError: the profile's SSH proxy host is not a safe host name.
    """
    host, port = split_host_port(profile.ssh_proxy_addr, SSH_PROXY_PORT)
    return Dial("tcp", validate_host(host, "SSH proxy host"), port, ())


def ssh_dial_words(dial: Dial) -> tuple[list[str], str]:
    """(options, destination) of OpenSSH's ssh for ``dial``."""
    return [*dial.options, "-p", str(dial.port)], dial.host
