"""How login proves who the user is: the Authenticator seam, and the password one.

login() pings the proxy and makes fresh keys; an Authenticator turns the ping
answer, the user, the keys' public halves and the wanted ttl into
certificates (a LoginResponse), asking the user whatever its method needs.
The password + OTP method is here, single sign-on in tsh._auth.sso, and
ByAuthType picks one of them by what the proxy says it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .._exceptions import UsageError

if TYPE_CHECKING:
    from .._web.client import WebClient
    from .._web.wire import LoginResponse, PingResponse

__all__ = ["Authenticator", "ByAuthType", "PasswordAuthenticator", "Prompter", "PublicKeys"]

#: Second-factor modes whose login is password + OTP through /webapi/ssh/certs.
OTP_MODES = ("otp", "on", "optional")


class PublicKeys(NamedTuple):
    """The public halves of a login's fresh keys, for the proxy to certify."""

    #: The SSH key, an OpenSSH line.
    ssh: str
    #: v17+: the separate TLS key (PKCS#8 PEM); None when the SSH key doubles as the TLS key.
    tls: str | None


class Authenticator(Protocol):
    """One way of logging in: proves the user to the proxy, returns the certificates."""

    def authenticate(
        self,
        ping: PingResponse,
        user: str,
        client: WebClient,
        keys: PublicKeys,
        ttl_seconds: float,
        cluster: str,
    ) -> LoginResponse:
        """Certificates for ``keys`` as ``user``, valid ``ttl_seconds``, for ``cluster``.

        ``cluster`` is "" for the root cluster. Raises UsageError (before
        asking anything) when the proxy wants a method this one is not.
        """
        ...


class Prompter(Protocol):
    """Where the password method gets secrets from (a terminal, stdin lines, a test double)."""

    def password(self, user: str) -> str: ...

    def otp(self) -> str: ...


class PasswordAuthenticator:
    """Local users: a password, and an OTP code when the proxy's second factor needs one."""

    def __init__(self, password: Callable[[str], str], otp: Callable[[], str]) -> None:
        """``password(user)`` and ``otp()`` return what the user typed."""
        self._password = password
        self._otp = otp

    @classmethod
    def from_prompter(cls, prompter: Prompter) -> PasswordAuthenticator:
        """The password method asking ``prompter``."""
        return cls(prompter.password, prompter.otp)

    def authenticate(
        self,
        ping: PingResponse,
        user: str,
        client: WebClient,
        keys: PublicKeys,
        ttl_seconds: float,
        cluster: str,
    ) -> LoginResponse:
        """See :meth:`Authenticator.authenticate`."""
        if ping.auth_type != "local":
            raise UsageError(
                f"the proxy uses {ping.auth_type} single sign-on, not passwords "
                "(log in with an SSO authenticator, e.g. tsh.SSO)"
            )
        if ping.second_factor not in ("off", *OTP_MODES):
            raise UsageError(
                f"the proxy requires second factor {ping.second_factor!r} "
                "(a security key), which tsh-py does not support yet"
            )
        password = self._password(user)
        otp = self._otp() if ping.second_factor in OTP_MODES else ""
        # Up to v16 one key serves SSH and TLS; v17+ sends one of each.
        key_args = (
            {"pub_key": keys.ssh}
            if keys.tls is None
            else {"ssh_pub_key": keys.ssh, "tls_pub_key": keys.tls}
        )
        return client.ssh_certs(
            user=user,
            password=password,
            # Authenticator apps show codes in groups ("440 061"); people type them so.
            otp_token="".join(otp.split()),
            ttl_seconds=ttl_seconds,
            route_to_cluster=cluster,
            **key_args,
        )


class ByAuthType:
    """The proxy's method: ``sso`` when ping's ``auth.type`` is oidc, saml or github, else ``password``.

    What `tsh login` (and a relogin on expiry) uses, since the user does not
    say which method the cluster has; ``sso`` may be None (then SSO proxies
    get the password method's "not supported" error).
    """

    def __init__(self, password: Authenticator, sso: Authenticator | None) -> None:
        self.password = password
        self.sso = sso

    def authenticate(
        self,
        ping: PingResponse,
        user: str,
        client: WebClient,
        keys: PublicKeys,
        ttl_seconds: float,
        cluster: str,
    ) -> LoginResponse:
        """See :meth:`Authenticator.authenticate`."""
        from .._web.wire import SSO_TYPES

        chosen = self.sso if ping.auth_type in SSO_TYPES and self.sso is not None else self.password
        return chosen.authenticate(ping, user, client, keys, ttl_seconds, cluster)
