"""Run-time settings of one cluster process (from the ``start`` flags)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTH_TYPES",
    "LB_UPGRADES",
    "LISTENER_MODES",
    "RECORDING_MODES",
    "SECOND_FACTORS",
    "ServerConfig",
    "parse_version",
]

SECOND_FACTORS = ("off", "otp")
AUTH_TYPES = ("local", "oidc", "saml", "github")
RECORDING_MODES = ("node", "proxy", "off")
LISTENER_MODES = ("separate", "multiplex")
#: What a load balancer in front of the web port lets through: every
#: connection upgrade, only WebSocket ones, or none.
LB_UPGRADES = ("all", "websocket", "none")


def parse_version(text: str) -> tuple[int, int, int, str]:
    """``"17.0.1-dev"`` -> ``(17, 0, 1, "dev")``; ValueError if it is not semver-like."""
    core, _, pre = text.partition("-")
    parts = core.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid server version {text!r}: expected MAJOR.MINOR.PATCH")
    return int(parts[0]), int(parts[1]), int(parts[2]), pre


@dataclass
class ServerConfig:
    """What the web API and the SSH proxy need to know about this process."""

    cluster: str
    server_version: str = "17.0.0"
    second_factor: str = "off"
    recording: str = "node"
    #: Recording proxy: refuse nodes without a host certificate from the host CA.
    proxy_checks_host_keys: bool = True
    web_addr: str = ""
    ssh_proxy_addr: str = ""
    #: The auth gRPC listener ("127.0.0.1:PORT"), where ``proxy:@<cluster>`` is piped.
    auth_addr: str = ""
    #: Auth gRPC method names answered UNIMPLEMENTED (an older Teleport), e.g. "ListRemoteClusters".
    auth_unimplemented: tuple[str, ...] = ()
    #: Teleport's proxy_service ``public_addr`` / ``ssh_public_addr``, sent in
    #: ping as they are (a test can play a misconfigured or hostile proxy).
    public_addr: str = ""
    ssh_public_addr: str = ""
    #: The reverse-tunnel listener leaves dial ("127.0.0.1:PORT"), set when listening.
    tunnel_addr: str = ""
    #: A leaf without a heartbeat for this long is offline (trusted clusters).
    offline_threshold_s: float = 10.0
    #: The auth connector: ``local`` (passwords), or ``oidc``, ``saml`` or ``github`` (tests/cluster/_sso.py).
    auth: str = "local"
    #: Its name (default: the type); what ping's ``auth.<type>.name`` and ``--auth`` say.
    connector_name: str = ""
    #: OIDC: the provider's issuer URL and this relying party's client credentials.
    oidc_issuer: str = ""
    oidc_client_id: str = "teleport-test-cluster"
    oidc_client_secret: str = "test-cluster-secret"
    #: Teleport's ``proxy_listener_mode``: multiplex is TLS routing on the web port.
    listener_mode: str = "separate"
    #: The web port behind a TLS-terminating (L7) load balancer: no ALPN.
    behind_l7_lb: bool = False
    lb_upgrades: str = "all"
    #: Seconds between the pings of an ``alpn-ping`` connection upgrade.
    upgrade_ping_interval: float = 30.0

    @property
    def tls_routing(self) -> bool:
        return self.listener_mode == "multiplex"

    @property
    def major(self) -> int:
        return parse_version(self.server_version)[0]

    @property
    def split_keys(self) -> bool:
        """v17+ wire: ``ssh_pub_key`` + ``tls_pub_key`` (``pub_key`` deprecated)."""
        return self.major >= 17

    @property
    def min_client_version(self) -> str:
        return f"{max(self.major - 1, 0)}.0.0"
