"""The inner TLS between tsh and a cluster's auth server (pure; auth-grpc.md §1.4).

* the client certificate is the user's TLS certificate and key, always sent;
* the only trusted CA is the *target* cluster's host CA (``cas/<cluster>.pem``);
* SNI is ``hex(<root cluster>).teleport.cluster.local``: the auth server picks
  the CA pool it checks client certificates against from it (hex, so that a
  dot in a name cannot defeat the ``*.teleport.cluster.local`` wildcard);
* ALPN is ``h2`` alone.
"""

from __future__ import annotations

import ssl

__all__ = ["API_DOMAIN", "encode_cluster_name", "client_context"]

#: Teleport's apiDomain: the auth servers' certificates name *.teleport.cluster.local.
API_DOMAIN = "teleport.cluster.local"


def encode_cluster_name(cluster: str) -> str:
    """Teleport's EncodeClusterName: ``"root"`` -> ``"726f6f74.teleport.cluster.local"``."""
    return f"{cluster.encode().hex()}.{API_DOMAIN}"


def client_context(cert_file: str, key_file: str, ca_file: str) -> ssl.SSLContext:
    """The client side's TLS context (verification on, the user's certificate, ALPN h2).

    Raises:
        OSError, ssl.SSLError: a file is missing or unreadable.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checks and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=ca_file)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx
