"""The modes of the library as ``Literal`` aliases, for type checkers and readers.

Imported only under ``TYPE_CHECKING`` (or by code off the start-up path):
``typing`` itself costs start-up time.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["AgentMode", "DialMode", "KeyStorage", "OutputFormat", "ProxyCommandForm"]

#: ``tsh login -k``: load the agent if it can hold certificates (auto), always
#: (yes), never (no), or keep the private key only in agent and keyring (only).
AgentMode = Literal["auto", "yes", "no", "only"]
#: Where a profile's private key lives: on disk, or only in agent and keyring (``-k only``).
KeyStorage = Literal["disk", "agent"]
#: The ProxyCommand `tsh config` writes: `tsh proxy ssh`, or OpenSSH's own ``ssh -s``.
ProxyCommandForm = Literal["tsh", "openssh"]
#: How the hop reaches the proxy (tsh._proxy.dial): TCP to its SSH port; TLS
#: with ALPN to the web port (TLS routing); TLS inside a WebSocket (or legacy)
#: connection upgrade to the web port (TLS routing behind an L7 load balancer).
DialMode = Literal["tcp", "tls", "upgrade"]
#: `tsh status --format`.
OutputFormat = Literal["text", "json", "yaml"]
