"""`tsh config`: gather the facts for the configuration text, and write it.

The text itself is rendered by the pure tsh._openssh.config; this module does the
I/O around it: the current profile, the local ``ssh -V``, where the tsh
executable is, and the in-place ``--update`` of an ssh_config file.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipimport
from pathlib import Path

from .._core.addr import DEFAULT_NODE_PORT, FALLBACK_WEB_PORT, SSH_PROXY_PORT, split_host_port
from .._core.profile import Profile
from .._exceptions import ProfileError, UsageError
from .._store import fs as _fs
from .._store.layout import ProfilePaths
from .._store.store import ProfileStore
from .config import SSHConfigParams, merge, parse_openssh_version, render

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._auth.login import LoginResult
    from .config_record import ConfigUpdate

__all__ = [
    "openssh_version",
    "record_update",
    "refresh_after_login",
    "refresh_ssh_configs",
    "ssh_config",
    "tsh_executable",
    "update_ssh_config",
]


def openssh_version(ssh: str = "ssh") -> tuple[int, int] | None:
    """The local OpenSSH client's (major, minor), or None if it cannot be told."""
    try:
        out = subprocess.run(
            [ssh, "-V"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_openssh_version(out.stderr + out.stdout)


def tsh_executable() -> tuple[str, ...]:
    """How OpenSSH should start this tsh: its absolute path, or ``python -m tsh``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.endswith("__main__.py") or argv0 in ("-m", "-c", ""):
        return (sys.executable, "-m", "tsh")
    if _running_zipapp():  # this Python has the dependencies; the archive's #! may not
        return (sys.executable, str(Path(argv0).absolute()))
    found = argv0 if os.sep in argv0 else shutil.which(argv0)
    if found and os.access(found, os.X_OK) and Path(found).is_file():
        return (str(Path(found).absolute()),)
    found = shutil.which("tsh")
    if found:
        return (str(Path(found).absolute()),)
    return (sys.executable, "-m", "tsh")


def _running_zipapp() -> bool:
    """Whether this process runs tsh from a zipapp (packaging/build_zipapp.py)."""
    main = sys.modules.get("__main__")
    return isinstance(getattr(main, "__loader__", None), zipimport.zipimporter)


def ssh_config(
    profile: Profile,
    store: ProfileStore,
    *,
    port: int | None = None,
    login: str | None = None,
    proxy_command: str = "tsh",
    ssh_version: tuple[int, int] | None = None,
    reuse: bool = True,
    cluster: str | None = None,
) -> str:
    """Render the OpenSSH configuration for ``profile``.

    One block pair per cluster of the profile (root first, then its leaves),
    or only ``cluster``'s; the root's certificate serves them all, as in real
    tsh (the proxy routes a root certificate to any leaf). ``reuse``: hops
    share one authenticated connection to the proxy (tsh._openssh.reuse); the
    openssh form reuses only if the login left a tag.

    Raises:
        InvalidNameError: a name or path of the profile is unsafe in ssh_config.
        UsageError: bad option values.
    """
    paths = store.paths_for(profile)
    root = profile.root_cluster or profile.cluster
    clusters = tuple(profile.clusters) or (root,)
    if cluster is not None:
        if cluster not in clusters:
            raise UsageError(
                f"unknown cluster {cluster!r}: the profile knows {', '.join(clusters)} "
                "(log in again if a leaf was added)"
            )
        clusters = (cluster,)
    agent_only = profile.key_storage == "agent"
    try:
        web_host, web_port = split_host_port(profile.web_proxy_addr, FALLBACK_WEB_PORT)
        ssh_host, ssh_port = split_host_port(profile.ssh_proxy_addr, SSH_PROXY_PORT)
    except ValueError as e:
        raise ProfileError(f"profile {profile.name}: {e}") from None
    params = SSHConfigParams(
        proxy_host=web_host,
        proxy_port=web_port,
        ssh_proxy_host=ssh_host,
        ssh_proxy_port=ssh_port,
        clusters=clusters,
        known_hosts=str(paths.known_hosts.absolute()),
        identity_file=str((paths.public_key if agent_only else paths.private_key).absolute()),
        certificate_file=str(paths.ssh_cert(root).absolute()),
        # Only the tsh form names tsh: no PATH lookups for the openssh one.
        executable=tsh_executable() if proxy_command == "tsh" else (),
        port=DEFAULT_NODE_PORT if port is None else port,
        login=login,
        proxy_command=proxy_command,
        identities_only=agent_only,
        ssh_version=ssh_version,
        reuse=reuse,
        reuse_tag=str(paths.reuse_tag.absolute()) if reuse and paths.reuse_tag.is_file() else "",
    )
    return render(_tls_routing(params, profile, paths))


def _tls_routing(params: SSHConfigParams, profile: Profile, paths: ProfilePaths) -> SSHConfigParams:
    """``params`` with the TLS-routing fields the openssh form needs (docs/protocol.md §18)."""
    import dataclasses

    from .._proxy.dial import tls_route

    route = tls_route(profile, os.environ) if params.proxy_command == "openssh" else None
    if route is None:
        return params
    root = profile.root_cluster or profile.cluster
    return dataclasses.replace(
        params, tls_ca_file=str(paths.tls_ca(root).absolute()), conn_upgrade=route != "tls"
    )


def update_ssh_config(path: Path, block: str, proxy_host: str) -> tuple[bool, Path | None]:
    """Replace or append ``block`` in the ssh_config file ``path``.

    The file's other bytes and its mode are kept; the new content is written
    atomically after the old one is saved as ``<file>.tsh-backup``. A symlinked
    config (dotfile repositories) is updated at its target. Returns whether
    the file changed and the backup's path (None for a new file).

    Raises:
        UsageError: the file has a begin marker without an end marker, or is not
            a regular file.
    """
    target = path.resolve() if path.is_symlink() else path
    try:
        st = os.stat(target)
    except FileNotFoundError:
        # Create a missing ~/.ssh as 0700, but never re-mode an existing directory
        # (--update-file may point into a shared one).
        if not target.parent.is_dir():
            _fs.ensure_private_dir(target.parent)
        _fs.atomic_write(target, block, mode=0o600)
        return True, None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} is not a regular file")
    # surrogateescape: bytes that are not UTF-8 survive the round trip unchanged.
    old = target.read_bytes().decode("utf-8", "surrogateescape")
    new = merge(old, block, proxy_host)
    if new == old:
        return False, None
    mode = stat.S_IMODE(st.st_mode)
    backup = target.with_name(target.name + ".tsh-backup")
    _fs.atomic_write(backup, old.encode("utf-8", "surrogateescape"), mode=mode)
    _fs.atomic_write(target, new.encode("utf-8", "surrogateescape"), mode=mode)
    return True, backup


def _block_clusters(profile: Profile) -> tuple[str, ...]:
    """The clusters a block for all of ``profile``'s clusters covers (as ssh_config renders)."""
    return tuple(profile.clusters) or (profile.root_cluster or profile.cluster,)


def record_update(
    store: ProfileStore,
    profile: Profile,
    path: Path,
    *,
    port: int | None,
    login: str | None,
    proxy_command: str,
    cluster: str | None,
) -> None:
    """Remember that `tsh config --update` wrote ``profile``'s block into ``path``.

    A block of one ``cluster`` only is not kept current (a new leaf does not
    belong in it): its file's record, if any, is dropped.
    """
    from .config_record import ConfigUpdate, render_records, with_record

    record_file = store.paths_for(profile).ssh_config_record
    key = str(path.absolute())
    with store.transaction():
        records = _read_records(record_file)
        if cluster is None:
            new = with_record(
                records, ConfigUpdate(key, port, login, proxy_command, _block_clusters(profile))
            )
        else:
            new = [r for r in records if r.path != key]
        if new != records:
            _fs.atomic_write(record_file, render_records(new))


def _read_records(record_file: Path) -> list[ConfigUpdate]:
    from .config_record import parse_records

    try:
        return parse_records(_fs.read_text(record_file))
    except FileNotFoundError:
        return []


def refresh_after_login(
    result: LoginResult, wanted: bool | None = None, store: ProfileStore | None = None
) -> tuple[list[Path], list[str]]:
    """After a login: :func:`refresh_ssh_configs`, unless it is unwanted or cannot know.

    ``wanted`` (the login flag) or ``TELEPORT_UPDATE_SSH_CONFIG`` turns it off.
    Only a login that learnt the cluster list from the auth API counts: after
    ``-k only``, or when that step failed, the profile names the root only, and
    no leaf must leave a block. A refresh that fails is a problem, not an error:
    the login stands. Returns the files changed and the problems (one line each).
    """
    from .._exceptions import TshError
    from .config_record import UPDATE_ENV, refresh_wanted

    profile = result.profile
    if not refresh_wanted(wanted, os.environ.get(UPDATE_ENV)):
        return [], []
    if profile.key_storage == "agent" or any(w.code == "leaf-cas-unavailable" for w in result.warnings):
        return [], []
    try:
        return refresh_ssh_configs(store or ProfileStore(), profile)
    except (OSError, TshError) as e:
        return [], [f"the ssh_config blocks of tsh config --update were not refreshed: {e}"]


def refresh_ssh_configs(store: ProfileStore, profile: Profile) -> tuple[list[Path], list[str]]:
    """Refresh the blocks `tsh config --update` wrote, where ``profile``'s clusters changed.

    Each recorded file whose block covers other clusters than the profile's
    gets the block rendered again with the options it was written with,
    replaced in place and atomically (the previous file saved as
    ``<file>.tsh-backup``, its mode kept); the rest of the file stays byte for
    byte. A file without the block (the user removed it) is left alone, and
    its record forgotten.
    Returns the files changed and, as one-line texts, the problems met (the
    login stands either way).
    """
    import dataclasses

    from .._exceptions import TshError
    from .config_record import has_block, refresh_text, render_records

    record_file = store.paths_for(profile).ssh_config_record
    if not record_file.exists():  # the common case: no --update ever, nothing to import
        return [], []
    clusters = _block_clusters(profile)
    changed: list[Path] = []
    problems: list[str] = []
    with store.transaction():
        records = _read_records(record_file)
        kept: list[ConfigUpdate] = []
        for r in records:
            if r.clusters == clusters:
                kept.append(r)
                continue
            path = Path(r.path)
            try:
                block = ssh_config(
                    profile, store, port=r.port, login=r.login,
                    proxy_command=r.proxy_command, ssh_version=openssh_version(),
                )  # fmt: skip
                target = path.resolve() if path.is_symlink() else path
                st = os.stat(target)
                if not stat.S_ISREG(st.st_mode):
                    raise UsageError(f"{path} is not a regular file")
                old = target.read_bytes().decode("utf-8", "surrogateescape")
                if not has_block(old, profile.proxy_host):
                    continue  # the user removed the block: forget the record, add nothing
                new = refresh_text(old, block, profile.proxy_host)
                if new is not None:
                    mode = stat.S_IMODE(st.st_mode)
                    backup = target.with_name(target.name + ".tsh-backup")
                    _fs.atomic_write(backup, old.encode("utf-8", "surrogateescape"), mode=mode)
                    _fs.atomic_write(target, new.encode("utf-8", "surrogateescape"), mode=mode)
                    changed.append(path)
            except FileNotFoundError:
                pass  # the file is gone: the record goes with it
            except (OSError, TshError) as e:
                problems.append(f"{path} was not refreshed: {e}")
                kept.append(r)
            else:
                kept.append(dataclasses.replace(r, clusters=clusters))
        if kept != records:
            _fs.atomic_write(record_file, render_records(kept))
    return changed, problems
