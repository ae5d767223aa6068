"""Where a profile's files live under the tsh home: real tsh's ``~/.tsh`` layout (pure).

Every path of the tsh home is spelled here and nowhere else (docs/protocol.md
§5): ``<proxy>.yaml``, ``current-profile``, ``known_hosts`` and, under
``keys/<proxy>/``, the user's keys, ``<user>-ssh/<cluster>-cert.pub``,
``<user>-x509.pem`` and ``cas/<cluster>.pem``. tsh._store.store owns the
operations on them.
"""

from __future__ import annotations

import os
from collections import namedtuple

TYPE_CHECKING = False  # typing itself costs start-up time (`tsh proxy ssh`)
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ProfilePaths"]


class ProfilePaths(namedtuple("_ProfilePathsFields", ["home", "proxy_host", "user"])):
    """Where one profile's files live, following real tsh's ~/.tsh layout.

    ``home`` is a Path, and then so is every path here; or a str, and then
    every path is a str (for `tsh proxy ssh`, which does not import pathlib:
    start-up time). ``proxy_host`` and ``user`` name the profile.
    """

    __slots__ = ()

    def _path(self, *parts: str) -> Path:
        home = self.home
        return os.path.join(home, *parts) if isinstance(home, str) else home.joinpath(*parts)  # type: ignore[return-value]

    def _in_keys(self, *parts: str) -> Path:
        """A path under ``keys/<proxy_host>``."""
        return self._path("keys", self.proxy_host, *parts)

    @property
    def profile_file(self) -> Path:
        return self._path(f"{self.proxy_host}.yaml")

    @property
    def ssh_config_record(self) -> Path:
        """tsh-py's own: which ssh_config files `tsh config --update` wrote (tsh._openssh.config_record)."""
        return self._path(f"{self.proxy_host}.ssh-config.json")

    @property
    def current_profile(self) -> Path:
        return self._path("current-profile")

    @property
    def known_hosts(self) -> Path:
        return self._path("known_hosts")

    @property
    def keys_dir(self) -> Path:
        return self._in_keys()

    @property
    def private_key(self) -> Path:
        return self._in_keys(self.user)

    @property
    def public_key(self) -> Path:
        return self._in_keys(f"{self.user}.pub")

    @property
    def tls_key(self) -> Path:
        """v17+: the separate TLS private key."""
        return self._in_keys(f"{self.user}.key")

    @property
    def tls_cert(self) -> Path:
        """v17+ name of the TLS client certificate."""
        return self._in_keys(f"{self.user}.crt")

    @property
    def tls_cert_legacy(self) -> Path:
        """Up to v16: TLS client certificate for the single key."""
        return self._in_keys(f"{self.user}-x509.pem")

    @property
    def ssh_cert_dir(self) -> Path:
        return self._in_keys(f"{self.user}-ssh")

    def ssh_cert(self, cluster: str) -> Path:
        return self._in_keys(f"{self.user}-ssh", f"{cluster}-cert.pub")

    @property
    def reuse_tag(self) -> Path:
        """tsh-py only: the certificate's hop-reuse tag (tsh._openssh.reuse)."""
        return self._in_keys(f"{self.user}-ssh", "reuse")

    @property
    def mux_dir(self) -> Path:
        """tsh-py only: 0700 directory of the hop masters' control sockets."""
        return self._path("mux")

    @property
    def cas_dir(self) -> Path:
        return self._in_keys("cas")

    def tls_ca(self, cluster: str) -> Path:
        return self._in_keys("cas", f"{cluster}.pem")

    @property
    def certs_pem(self) -> Path:
        return self._in_keys("certs.pem")
