"""The local ssh-agent: load our key and certificate, replace and remove only ours.

Keys are added through asyncssh's agent client with the comment
``teleport:<proxy>:<cluster>:<user>`` (docs/protocol.md §7) and a
lifetime equal to the certificate's remaining validity, so the agent drops the
key when the certificate expires. A re-login first removes the keys carrying
the same comment; other keys are never touched.

Some agents accept the add request but cannot hold certificates (gpg-agent,
older gnome-keyring, some password managers). After adding we list the agent
and check the certificate is really there. The caller turns AgentError into a
warning: the agent never makes a login fail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from .._core.profile import Profile
from .._exceptions import AgentError, UsageError
from .._store.store import ProfileStore

TYPE_CHECKING = False  # typing itself costs start-up time (`tsh proxy ssh`, -k only)
if TYPE_CHECKING:
    from typing import Any

    from .._types import AgentMode

__all__ = [
    "AGENT_MODES",
    "agent_comment",
    "parse_agent_comment",
    "resolve_agent_mode",
    "suspect_agent",
    "load_into_agent",
    "remove_from_agent",
    "drop_from_agent",
    "ensure_agent_key",
]

AGENT_MODES = ("auto", "no", "yes", "only")
#: Seconds any single agent conversation may take (a hung agent must not hang tsh).
AGENT_TIMEOUT = 10.0


def resolve_agent_mode(
    flag: str | None, use_local_agent: bool | None, environ: Mapping[str, str]
) -> AgentMode:
    """The effective ``--add-keys-to-agent`` mode (pure).

    The flag wins over ``TELEPORT_ADD_KEYS_TO_AGENT``; ``auto`` is the default.
    ``--no-use-local-ssh-agent`` or ``TELEPORT_USE_LOCAL_SSH_AGENT=false``
    means no agent at all (mode ``no``); combined with ``only`` that leaves
    nowhere for the key to live, which is a usage error.
    """
    mode = (flag or environ.get("TELEPORT_ADD_KEYS_TO_AGENT") or "auto").strip().lower()
    if mode not in AGENT_MODES:
        raise UsageError(f'invalid value "{mode}", must be one of [auto no yes only]')
    if use_local_agent is None:
        env = environ.get("TELEPORT_USE_LOCAL_SSH_AGENT", "").strip().lower()
        use_local_agent = env not in ("false", "0", "no", "off")
    if not use_local_agent:
        if mode == "only":
            raise UsageError(
                'agent mode "only" keeps the key in the ssh-agent, '
                "but use of the local ssh-agent is turned off"
            )
        return "no"
    return mode  # type: ignore[return-value]  # checked against AGENT_MODES above


def agent_comment(proxy_host: str, cluster: str, user: str) -> str:
    """The comment that marks our agent keys (cluster before user, as tsh does).

    Exactly real tsh's, also for an IPv6 proxy (``teleport:::1:cluster:user``).
    """
    return f"teleport:{proxy_host}:{cluster}:{user}"


def parse_agent_comment(comment: str) -> tuple[str, str, str] | None:
    """(proxy, cluster, user) of a tsh agent comment, or None for anyone else's key.

    Read from the right: cluster and user names never contain a colon, but an
    IPv6 proxy host does (real tsh splits at every colon, so it cannot read
    back the comments it writes for one).
    """
    prefix, _, rest = comment.partition(":")
    parts = rest.rsplit(":", 2)
    if prefix != "teleport" or len(parts) != 3 or not all(parts):
        return None
    if ":" in parts[0] and not _is_ipv6(parts[0]):
        return None
    return parts[0], parts[1], parts[2]


def _is_ipv6(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(host.partition("%")[0])  # a scope ID (fe80::1%eth0) is part of it
    except ValueError:
        return False
    return True


def suspect_agent(sock: str) -> str | None:
    """Why the agent at ``sock`` probably cannot hold certificates, or None.

    A heuristic (as real tsh's): gpg-agent's socket path names it.
    """
    if "gpg-agent" in sock or os.path.basename(sock) == "S.gpg-agent.ssh":
        return "the agent at SSH_AUTH_SOCK looks like gpg-agent, which cannot hold SSH certificates"
    return None


def _run(coro_factory: Callable[[], object]) -> object:
    """Run an agent conversation to completion from synchronous code.

    Never asyncio.run in a thread whose event loop is running (a library
    caller's async code): asyncio refuses, so the conversation then gets a
    fresh loop in a worker thread, and this call blocks as it would anyway.
    """
    import asyncio  # here: `tsh proxy ssh` uses this module without any agent I/O

    async def bounded() -> object:
        return await asyncio.wait_for(coro_factory(), AGENT_TIMEOUT)  # type: ignore[arg-type]

    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(bounded())
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="tsh-agent") as worker:
            return worker.submit(lambda: asyncio.run(bounded())).result()
    except asyncio.TimeoutError:
        raise AgentError("the ssh-agent did not answer in time") from None
    except (OSError, EOFError, ValueError) as e:
        # asyncssh reports a broken or hung-up agent as ValueError (or a socket error).
        raise AgentError(f"the ssh-agent failed: {e or type(e).__name__}") from None


async def _connect(sock: str):  # type: ignore[no-untyped-def]
    from .._asyncssh import asyncssh

    try:
        return await asyncssh.connect_agent(sock)
    except (OSError, ValueError) as e:
        raise AgentError(f"cannot connect to the ssh-agent at {sock}: {e}") from None


def load_into_agent(
    sock: str,
    private_key_pem: str,
    cert_text: str,
    comment: str,
    valid_before: int,
    now: float | None = None,
    *,
    replace: bool = True,
) -> frozenset[bytes]:
    """Add this key and certificate with ``comment``; with ``replace``, drop our older ones.

    The lifetime constraint is the certificate's remaining validity. Returns
    the public blobs added (for :func:`drop_from_agent`). Without
    ``replace`` the older keys carrying ``comment`` stay until the caller
    removes them (:func:`remove_from_agent` with ``keep``), so that an
    operation failing later can leave the agent as it was. Raises
    AgentError if the agent refuses the key or does not hold the certificate
    afterwards; then nothing of this key is left behind.
    """
    from .._asyncssh import asyncssh

    lifetime = int(valid_before - (time.time() if now is None else now))
    if lifetime <= 0:
        raise AgentError("the certificate has expired; not adding it to the ssh-agent")
    try:
        key = asyncssh.import_private_key(private_key_pem)
        cert = asyncssh.import_certificate(cert_text.strip())
    except (asyncssh.KeyImportError, ValueError) as e:
        raise AgentError(f"cannot load the key for the ssh-agent: {e}") from None
    key.set_comment(comment)
    cert.set_comment(comment)
    added = frozenset({key.public_data, cert.public_data})

    async def run() -> None:
        agent = await _connect(sock)
        try:
            if replace:
                await _remove(agent, lambda k: (k.get_comment() or "") == comment)
            try:
                await agent.add_keys([(key, cert)], lifetime=lifetime)
            except ValueError as e:
                raise AgentError(f"the ssh-agent at {sock} refused the certificate ({e})") from None
            held = await agent.get_keys()
            if not any(k.public_data == cert.public_data for k in held):
                await _remove(agent, lambda k: k.public_data in added)
                raise AgentError(
                    f"the ssh-agent at {sock} accepted the key but does not hold its certificate"
                )
        finally:
            agent.close()
            await agent.wait_closed()

    _run(run)
    return added


async def _remove(agent, match: Callable[[Any], bool]) -> int:  # type: ignore[no-untyped-def]
    """Remove the agent keys (asyncssh SSHKeyPairs) that ``match`` accepts."""
    doomed = [k for k in await agent.get_keys() if match(k)]
    if doomed:
        await agent.remove_keys(doomed)
    return len(doomed)


def _remove_where(sock: str, match: Callable[[Any], bool]) -> int:
    async def run() -> int:
        agent = await _connect(sock)
        try:
            return await _remove(agent, match)
        except ValueError as e:
            raise AgentError(f"the ssh-agent at {sock} refused to remove a key ({e})") from None
        finally:
            agent.close()
            await agent.wait_closed()

    result = _run(run)
    assert isinstance(result, int)
    return result


def remove_from_agent(
    sock: str, match: Callable[[str], bool], keep: frozenset[bytes] = frozenset()
) -> int:
    """Remove the keys whose comment ``match`` accepts, but those in ``keep``; return how many."""
    return _remove_where(
        sock, lambda k: match(k.get_comment() or "") and k.public_data not in keep
    )


def drop_from_agent(sock: str, added: frozenset[bytes]) -> int:
    """Remove exactly the keys :func:`load_into_agent` returned; return how many were there."""
    return _remove_where(sock, lambda k: k.public_data in added)


def ensure_agent_key(
    profile: Profile, store: ProfileStore | None = None, sock: str | None = None
) -> str | None:
    """Put a `-k only` profile's key back into the agent while its certificate is valid.

    For profiles whose key is kept in the agent and the OS keyring (not on
    disk): if the agent at ``sock`` (default ``$SSH_AUTH_SOCK``) lacks the
    certificate, the key is read from the keyring and added again. Returns a
    one-line warning when that was needed but impossible, else None.
    """
    if profile.key_storage != "agent" or profile.valid_before <= time.time():
        return None
    sock = sock if sock is not None else os.environ.get("SSH_AUTH_SOCK", "")
    if not sock:
        return "no ssh-agent is running (SSH_AUTH_SOCK is not set); run `tsh login` again"
    from .._store import fs as _fs
    from .._store import secrets as _secrets
    from .probe import agent_holds_certificate

    store = store or ProfileStore()
    cert_path = store.paths_for(profile).ssh_cert(profile.cluster)
    # The usual case, the key is still there, costs one `ssh-add -L`, no SSH library.
    if agent_holds_certificate(cert_path, sock):
        return None
    try:
        cert_text = _fs.read_text(cert_path)
    except OSError:
        return f"the certificate of {profile.name} is missing; run `tsh login` again"
    try:
        pem = _secrets.load_key(profile.proxy_host, profile.user, profile.cluster)
        if pem is None:
            return (
                f"the key of {profile.name} is neither in the ssh-agent nor in the OS keyring; "
                "run `tsh login` again"
            )
        load_into_agent(
            sock,
            pem,
            cert_text,
            agent_comment(profile.proxy_host, profile.cluster, profile.user),
            profile.valid_before,
        )
    except AgentError as e:
        return str(e)
    return None
