"""How the proxy logs users in: user certificates from the cluster's user CA only."""

from __future__ import annotations

from collections.abc import Callable

import asyncssh

__all__ = ["UserCertServer"]


class UserCertServer(asyncssh.SSHServer):
    """Accepts only user certificates from a trusted user CA whose principals include the user.

    The outer SSH proxy and the recording proxy's in-channel server both log
    users in this way, as Teleport's proxy does. ``trusted_user_cas`` is asked
    on every login (``Authority.keys("user").trusted``: both keys while a
    rotation runs, only the new one after it).
    """

    def __init__(self, trusted_user_cas: Callable[[], tuple[asyncssh.SSHKey, ...]]):
        self._trusted = trusted_user_cas

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
        return any(key.public_data == ca.public_data for ca in self._trusted())
