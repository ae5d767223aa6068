"""Run-time settings of one cluster process (from the ``start`` flags)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerConfig", "SECOND_FACTORS", "RECORDING_MODES", "parse_version"]

SECOND_FACTORS = ("off", "otp")
RECORDING_MODES = ("node", "proxy", "off")


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
    #: Teleport's proxy_service ``public_addr`` / ``ssh_public_addr``, sent in
    #: ping as they are (a test can play a misconfigured or hostile proxy).
    public_addr: str = ""
    ssh_public_addr: str = ""
    #: The reverse-tunnel listener leaves dial ("127.0.0.1:PORT"), set when listening.
    tunnel_addr: str = ""
    #: A leaf without a heartbeat for this long is offline (trusted clusters).
    offline_threshold_s: float = 10.0

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
