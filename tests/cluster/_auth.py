"""How the proxy logs users in: user certificates from the cluster's user CA only."""

from __future__ import annotations

import asyncssh

__all__ = ["UserCertServer"]


class UserCertServer(asyncssh.SSHServer):
    """Accepts only user certificates from ``user_ca`` whose principals include the user.

    The outer SSH proxy and the recording proxy's in-channel server both log
    users in this way, as Teleport's proxy does.
    """

    def __init__(self, user_ca: asyncssh.SSHKey):
        self._user_ca = user_ca

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # bare keys never; certificates only

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh then checks type, validity window and that `username` is a principal.
        return key.public_data == self._user_ca.public_data
