"""Teleport's auth gRPC API, reached through the proxy (docs/protocol.md, "The auth API").

* ``stream``: the byte stream to a cluster's auth server (the seam: today the
  ``proxy:@<cluster>`` subsystem of the SSH connection to the proxy);
* ``tls``: the inner mutual TLS (pure);
* ``client``: :class:`~tsh._authapi.client.AuthClient`, grpclib over that TLS;
* ``proto/``: the trimmed Teleport ``.proto`` files, ``_pb/`` the code
  generated from them by ``packaging/gen_proto.py``.

Nothing here is imported at start-up: grpclib and protobuf load only for the
commands that call the auth API.
"""
