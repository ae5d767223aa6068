"""Auth API calls for a stored profile: open the proxy connection, the client, call, close.

Also the step every login ends with (as real tsh's UpdateTrustedCA): one
``GetCertAuthorities`` (host, no keys) on the root, whose answer holds the
root's host CA and every leaf's, written to known_hosts and ``cas/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from .._exceptions import AuthAPIError

if TYPE_CHECKING:
    from .._connect import ProxyConnection
    from .._core.listing import ClusterInfo
    from .._core.profile import Profile
    from .._store.store import ProfileStore
    from .client import AuthClient

__all__ = ["with_auth", "with_proxy", "call_auth", "trust_cluster_cas", "cluster_rows", "parse_proxysites"]

T = TypeVar("T")


async def with_auth(
    store: ProfileStore,
    profile: Profile,
    fn: Callable[[AuthClient], Awaitable[T]],
    cluster: str | None = None,
    *,
    agent_path: str | None = None,
) -> T:
    """``await fn(client)`` with an auth client for ``cluster`` (default the profile's).

    Raises:
        NotLoggedInError, SSHError: the proxy connection (see tsh._connect);
        AuthAPIError: the auth API refused or could not be reached.
    """
    from .._connect import ProxyConnection
    from .client import AuthClient

    async with await ProxyConnection.open(profile, store, agent_path=agent_path) as pc:
        async with AuthClient.for_profile(pc, store.paths_for(profile), cluster) as client:
            return await fn(client)


def call_auth(
    store: ProfileStore,
    profile: Profile,
    fn: Callable[[AuthClient], Awaitable[T]],
    cluster: str | None = None,
) -> T:
    """:func:`with_auth` from synchronous code (a thread without a running event loop)."""
    return asyncio.run(with_auth(store, profile, fn, cluster))


async def trust_cluster_cas(client: AuthClient, store: ProfileStore, profile: Profile) -> Profile:
    """Fetch every host CA from the root's auth API and trust them; the saved profile.

    Raises:
        AuthAPIError: the call failed, or the answer lacks the root's own CA.
    """
    cas = await client.cert_authorities("host")
    if profile.root_cluster not in {ca.cluster for ca in cas}:
        raise AuthAPIError(
            f"the auth server listed no host CA for {profile.root_cluster}", "INTERNAL"
        )
    return store.save_trusted_cas(profile, [(ca.cluster, ca.ssh_keys, ca.tls_certs) for ca in cas])


async def with_proxy(
    store: ProfileStore,
    profile: Profile,
    fn: Callable[[ProxyConnection], Awaitable[T]],
    *,
    agent_path: str | None = None,
) -> T:
    """``await fn(pc)`` on a new proxy connection for ``profile``, closed after."""
    from .._connect import ProxyConnection

    async with await ProxyConnection.open(profile, store, agent_path=agent_path) as pc:
        return await fn(pc)


async def cluster_rows(pc: ProxyConnection, store: ProfileStore) -> list[ClusterInfo]:
    """`tsh clusters`' rows: the root (always online), then the leaves the root lists.

    Leaves come from ListRemoteClusters on the root; a root that answers
    UNIMPLEMENTED (older than the presence service) is asked through the
    proxy's ``proxysites`` subsystem instead, which has names and status only.
    """
    from .._core.listing import ClusterInfo
    from .client import AuthClient

    profile = pc.profile
    root = profile.root_cluster
    try:
        async with AuthClient.for_profile(pc, store.paths_for(profile), root) as client:
            leaves = [(rc.name, rc.status, rc.labels) for rc in await client.remote_clusters()]
    except AuthAPIError as e:
        if e.status != "UNIMPLEMENTED":
            raise
        leaves = [(n, st, {}) for n, st in parse_proxysites(await pc.read_subsystem("proxysites"))
                  if n != root]  # fmt: skip
    rows = [ClusterInfo(root, "online", "root", None, profile.cluster == root)]
    rows += [ClusterInfo(n, st, "leaf", labels, profile.cluster == n)
             for n, st, labels in sorted(leaves) if n != root]  # fmt: skip
    return rows


def parse_proxysites(data: bytes) -> list[tuple[str, str]]:
    """``proxysites``' JSON (``[{"name", "status", "lastconnected"}]``) as checked (name, status) pairs.

    Raises:
        AuthAPIError: not that JSON, or an unsafe cluster name.
    """
    import json

    from .._core.names import validate_cluster_name
    from .._exceptions import InvalidNameError

    try:
        sites = json.loads(data)
        pairs = [(str(s["name"]), str(s.get("status", ""))) for s in sites]
        return [(validate_cluster_name(n), st if st in ("online", "offline") else "offline")
                for n, st in pairs]  # fmt: skip
    except (ValueError, TypeError, KeyError, InvalidNameError):
        raise AuthAPIError("the proxy's proxysites answer is malformed", "INTERNAL") from None
