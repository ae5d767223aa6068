"""`tsh login <cluster>` with a valid login: new certificates routed to that cluster, no password.

As real tsh's ReissueUserCerts: the root's auth API (GenerateUserCerts over
the proxy, tsh._authapi) signs the profile's existing keys again with
``RouteToCluster=<cluster>``, expiring with the current login. The SSH
certificate is filed as ``<user>-ssh/<cluster>-cert.pub`` and the profile's
selected cluster becomes ``cluster``; the host CAs are refreshed on the way.
As real tsh's (its LocalKeyAgent.AddKey), the new certificate then goes into
the ssh-agent with the cluster's comment, beside the root's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._exceptions import AuthAPIError, NotLoggedInError, TshWarning

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._authapi.client import AuthClient
    from .._connect import ProxyConnection
    from .._core.profile import Profile
    from .._store.store import ProfileStore
    from .._types import AgentMode

__all__ = ["switch_cluster", "reissue_for_cluster"]


def switch_cluster(
    store: ProfileStore, profile: Profile, cluster: str, clock: Callable[[], float] = time.time,
    agent_mode: AgentMode = "no", environ: Mapping[str, str] | None = None,
) -> tuple[Profile, list[TshWarning]]:
    """Select ``cluster`` (a leaf, or the root) for ``profile`` without a password.

    Returns the new profile and the warnings of loading its certificate into
    the agent at ``$SSH_AUTH_SOCK`` (``agent_mode`` ``auto`` or ``yes``; as
    at login, the agent never makes it fail).

    Raises:
        NotLoggedInError: the login expired, or its keys are not on disk;
        AuthAPIError: the root refused (e.g. ``NOT_FOUND``: no such leaf) or is unreachable;
        SSHError, CertificateError, ProfileError: as for other calls through the proxy.
    """
    import asyncio

    from .._authapi.session import with_proxy
    from .._core.names import validate_cluster_name

    validate_cluster_name(cluster)
    if profile.valid_before <= clock():
        raise NotLoggedInError(f"the login to {profile.name} has expired", profile.web_proxy_addr)

    async def go(pc: ProxyConnection) -> Profile:
        from .._authapi.client import AuthClient

        async with AuthClient.for_profile(pc, store.paths_for(profile), profile.root_cluster) as c:
            return await reissue_for_cluster(c, store, profile, cluster, clock())

    new = asyncio.run(with_proxy(store, profile, go))
    warnings: list[TshWarning] = []
    if agent_mode in ("auto", "yes"):  # (else no key to read)
        from .._agent.agent import agent_comment
        from .login import load_key

        paths = store.paths_for(new)
        comment = agent_comment(new.proxy_host, cluster, new.user)
        sock = (os.environ if environ is None else environ).get("SSH_AUTH_SOCK", "")
        try:
            key_pem, cert = paths.private_key.read_text(), paths.ssh_cert(cluster).read_text()
        except OSError as e:
            warnings.append(TshWarning("agent-failed", f"cannot read the key for the ssh-agent: {e}"))
        else:
            load_key(agent_mode, sock, key_pem, cert, comment, new.valid_before, clock(), warnings)
    return new, warnings


def _public_pem(path: object) -> str:
    from .._asyncssh import asyncssh

    try:
        key = asyncssh.read_private_key(str(path))
    except FileNotFoundError:
        raise NotLoggedInError(f"{path} is missing; log in again") from None
    except (OSError, ValueError, asyncssh.KeyImportError) as e:
        raise NotLoggedInError(f"cannot read {path}: {e}") from None
    return str(key.export_public_key("pkcs8-pem").decode())


async def reissue_for_cluster(
    client: AuthClient, store: ProfileStore, profile: Profile, cluster: str, now: float
) -> Profile:
    """Reissue ``profile``'s certificates for ``cluster`` on the root's ``client``; save; the new profile."""
    from .._authapi.session import trust_cluster_cas
    from .._core.certs import check_tls_cert, check_user_cert
    from .._web.wire import server_major

    paths = store.paths_for(profile)
    split = server_major(profile.server_version) >= 17
    try:
        ssh_public = paths.public_key.read_text()
    except FileNotFoundError:
        raise NotLoggedInError(f"{paths.public_key} is missing; log in again") from None
    single = paths.tls_cert_legacy.exists() or not paths.tls_cert.exists()
    tls_public = _public_pem(paths.private_key if single else paths.tls_key)
    try:
        certs = await client.generate_user_certs(
            ssh_public_key=ssh_public,
            tls_public_key=None if single else tls_public,
            username=profile.user,
            expires=profile.valid_before,
            route_to_cluster=cluster,
            split_keys=split and not single,
        )
    except AuthAPIError as e:
        if e.status == "NOT_FOUND":
            raise AuthAPIError(
                f'unknown cluster "{cluster}": {profile.root_cluster} has no leaf cluster of that name',
                e.status,
            ) from None
        raise
    facts = check_user_cert(certs.ssh, ssh_public, now)
    if certs.tls:
        check_tls_cert(certs.tls, tls_public, now)
    new = profile._replace(
        cluster=cluster,
        valid_after=facts.valid_after,
        valid_before=facts.valid_before,
        principals=facts.principals,
        extensions=facts.extensions,
        roles=facts.roles,
    )
    store.save_reissue(new, cluster, certs.ssh, certs.tls)
    try:
        new = await trust_cluster_cas(client, store, new)
    except AuthAPIError:
        pass  # the leaf's CA came with the last full login; the next one retries
    return new
