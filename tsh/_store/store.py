"""The profile store: tsh's home directory on disk, and every operation on it.

Saving a login, removing a user or everything, and listing what is there
live here (paths come from tsh._store.layout), so that the layout has one
owner: login, logout and the tests' helpers call these methods.

Home is ``$TELEPORT_HOME`` if set, else platformdirs' user data directory for
``tsh-py``. Reads never take the lock (every file is replaced atomically);
writers hold ``<home>/.lock`` for the whole multi-file update.

What `tsh proxy ssh` uses on every connection (finding and reading a
profile) works on str paths, so that it does not import pathlib (start-up time).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from .._core.addr import split_host_port
from .._core.profile import Profile
from .._exceptions import NotLoggedInError, ProfileError, UsageError
from . import fs as _fs
from .layout import ProfilePaths

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from pathlib import Path

    from .._web.wire import HostSigner

__all__ = ["LoginFiles", "ProfileStore", "default_home", "parse_proxy_arg"]

#: Entries of tsh's home that "remove everything" keeps (real tsh's list, plus our lock).
_KEEP = {"config", "azure", ".lock"}


def default_home() -> str:
    """``$TELEPORT_HOME``, else the platform's per-user data directory for tsh-py."""
    env = os.environ.get("TELEPORT_HOME")
    if env:
        home = os.path.expanduser(env)
        return home if os.path.isabs(home) else os.path.join(os.getcwd(), home)
    common = _linux_data_home()
    if common is not None:
        return os.path.join(common, "tsh-py")
    import platformdirs  # only when needed: it costs start-up time

    return platformdirs.user_data_dir("tsh-py", appauthor=False)


def _linux_data_home() -> str | None:
    """platformdirs' user data directory on Linux in the common cases, or None.

    ``$XDG_DATA_HOME`` if absolute, else ``$HOME/.local/share`` for an
    absolute ``$HOME``. Worked out here because `tsh proxy ssh` needs it on
    every connection and importing platformdirs (with tempfile and shutil)
    costs more than the rest of finding the profile; anything less common is
    left to platformdirs. A test compares both.
    """
    if not sys.platform.startswith("linux"):
        return None
    xdg, home = os.environ.get("XDG_DATA_HOME", ""), os.environ.get("HOME", "")
    if xdg.startswith("/"):
        return xdg
    if not xdg.strip() and home.startswith("/"):
        return os.path.join(home, ".local", "share")
    return None


def parse_proxy_arg(proxy: str) -> tuple[str, int | None]:
    """``HOST[:PORT]`` (or ``[V6]:PORT``, either after ``https://``) of ``--proxy``.

    Returns the host, validated (it names the profile's files), and the port,
    None when not given.

    Raises:
        UsageError: not an address, or a scheme other than https.
        InvalidNameError: the host is not a plain host name or address.
    """
    from .._core.names import validate_host

    text = proxy.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() != "https":
            raise UsageError(f"proxy address {proxy!r}: only https proxies are supported")
        text = rest.rstrip("/")
    try:
        host, port = split_host_port(text, 0)
    except ValueError as e:
        raise UsageError(f"proxy address {proxy!r}: {e}") from None
    return validate_host(host, "proxy host"), (port or None)


class LoginFiles:
    """What one login of one user to one proxy keeps on disk (see ProfileStore.save_login).

    The texts arrive checked (the certificates are for these keys; the host
    signers come parsed from the login answer). A None key is kept off disk.
    """

    __slots__ = (
        "private_key", "public_key", "ssh_cert", "tls_cert", "tls_key", "single_key",
        "host_signers",
    )  # fmt: skip

    def __init__(
        self,
        *,
        public_key: str,
        ssh_cert: str,
        host_signers: Sequence[HostSigner],
        private_key: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        single_key: bool = False,
    ) -> None:
        #: The SSH private key (PEM), or None when it is kept off disk (agent and keyring).
        self.private_key = private_key
        #: Its public half, an OpenSSH line.
        self.public_key = public_key
        #: The SSH user certificate, saved for the profile's cluster and root cluster.
        self.ssh_cert = ssh_cert
        #: The TLS client certificate (PEM), or None for none.
        self.tls_cert = tls_cert
        #: v17+: the separate TLS private key (PKCS#8 PEM), or None when kept off disk.
        self.tls_key = tls_key
        #: Up to v16 one key serves SSH and TLS: the TLS certificate is ``<user>-x509.pem``.
        self.single_key = single_key
        #: Each cluster's host CA: known_hosts lines and ``cas/<cluster>.pem``.
        self.host_signers = tuple(host_signers)

    def __repr__(self) -> str:
        # Private keys stay out of repr(), so no traceback or log can show them.
        return f"LoginFiles(public_key={self.public_key!r}, single_key={self.single_key})"


class ProfileStore:
    """Profiles, keys and certificates under one tsh home directory."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._home = os.fspath(home) if home is not None else default_home()

    @property
    def home(self) -> Path:
        """The home directory."""
        from pathlib import Path

        return Path(self._home)

    def paths(self, proxy_host: str, user: str, *, as_str: bool = False) -> ProfilePaths:
        """Where ``user``'s files for ``proxy_host`` live in this store.

        The paths are Paths, or with ``as_str`` strs (no pathlib import).
        """
        return ProfilePaths(self._home if as_str else self.home, proxy_host, user)

    def paths_for(self, profile: Profile, *, as_str: bool = False) -> ProfilePaths:
        """Where ``profile``'s files live in this store (see :meth:`paths`)."""
        return self.paths(profile.proxy_host, profile.user, as_str=as_str)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the store's write lock; create home (0700) first if needed."""
        _fs.ensure_private_home(self.home)
        with _fs.locked(self.home / ".lock"):
            yield

    def save_login(
        self,
        profile: Profile,
        files: LoginFiles,
        before_commit: Callable[[], Callable[[], None] | None] | None = None,
    ) -> None:
        """Save ``profile`` and its ``files`` as the current profile, all or nothing.

        Under the store lock every file is staged completely, then they all
        replace the old ones; files of an earlier login that this one does not
        have (a key now kept off disk, the other TLS layout) are removed after.
        The proxy's known_hosts lines are replaced, other proxies' kept.

        ``before_commit`` runs once everything is staged, just before the old
        files are replaced (to put a key kept off disk in its place); it may
        return a function that undoes it, which runs if the replacement fails.

        Raises:
            ProfileError: a planted symlink, or the lock is held too long;
                OSError: the disk refused. Either way the old files stay.
        """
        from .._core.knownhosts import ca_lines

        paths = self.paths_for(profile)
        proxy_host = profile.proxy_host
        stale = [paths.tls_cert if files.single_key else paths.tls_cert_legacy]
        if files.private_key is None:
            stale.append(paths.private_key)
        if files.tls_key is None:
            stale.append(paths.tls_key)
        known_lines = [
            line
            for s in files.host_signers
            for line in ca_lines(proxy_host, s.domain_name, s.checking_keys)
        ]
        from .._openssh.reuse import tag_text

        reuse_tag = tag_text(
            str(paths.mux_dir.absolute()), proxy_host, profile.user, files.ssh_cert, profile.valid_before
        )
        if reuse_tag is None:
            stale.append(paths.reuse_tag)  # a home too long for a socket path: no hop reuse
        dirs = (self.home / "keys", paths.keys_dir, paths.ssh_cert_dir, paths.cas_dir, paths.mux_dir)
        with self.transaction():
            created = [d for d in dirs if not os.path.lexists(d)]
            try:
                for d in dirs:
                    _fs.ensure_private_dir(d)
                self._stage_login(profile, files, paths, known_lines, before_commit, reuse_tag)
            except BaseException:
                for d in reversed(created):  # a first login that failed leaves no trace
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass
                raise
            for path in stale:
                _fs.remove_file(path)

    def _stage_login(
        self,
        profile: Profile,
        files: LoginFiles,
        paths: ProfilePaths,
        known_lines: list[str],
        before_commit: Callable[[], Callable[[], None] | None] | None,
        reuse_tag: str | None = None,
    ) -> None:
        """save_login's staging and commit, with the lock held and the directories made."""
        from .._core.knownhosts import merge_known_hosts
        from .._openssh.reuse import fresh_until

        try:
            known_hosts = _fs.read_text(paths.known_hosts)
        except FileNotFoundError:
            known_hosts = ""
        with _fs.StagedFiles() as staged:
            if files.private_key is not None:
                staged.stage(paths.private_key, files.private_key)
            staged.stage(paths.public_key, files.public_key)
            if files.tls_cert is not None:
                tls_cert = paths.tls_cert_legacy if files.single_key else paths.tls_cert
                staged.stage(tls_cert, files.tls_cert)
            if files.tls_key is not None:
                staged.stage(paths.tls_key, files.tls_key)
            for name in dict.fromkeys((profile.cluster, profile.root_cluster)):
                staged.stage(paths.ssh_cert(name), files.ssh_cert)
            if reuse_tag is not None:
                staged.stage(paths.reuse_tag, reuse_tag, mtime=fresh_until(profile.valid_before))
            for signer in files.host_signers:
                if signer.tls_certs:
                    staged.stage(paths.tls_ca(signer.domain_name), "".join(signer.tls_certs))
            staged.stage(
                paths.certs_pem, "".join(c for s in files.host_signers for c in s.tls_certs)
            )
            staged.stage(
                paths.known_hosts, merge_known_hosts(known_hosts, profile.proxy_host, known_lines)
            )
            staged.stage(paths.profile_file, profile.to_json())
            staged.stage(paths.current_profile, f"{profile.name}\n")
            undo = before_commit() if before_commit is not None else None
            try:
                staged.commit()
            except BaseException:
                if undo is not None:
                    undo()
                raise

    def save_trusted_cas(
        self, profile: Profile, cas: Sequence[tuple[str, Sequence[str], Sequence[str]]]
    ) -> Profile:
        """Trust every cluster's host CA as the auth API listed them, root and leaves.

        ``cas`` holds (cluster, SSH CA keys, TLS CA PEMs), checked by the
        caller. Writes ``cas/<cluster>.pem`` for each, ``certs.pem``, replaces
        this proxy's known_hosts lines with theirs (the root's CA trusted for the
        leaves' names too), and records the cluster
        list (root first) in the profile. Returns the saved profile.

        Raises:
            ProfileError: the profile changed meanwhile (another login), or a
                planted symlink; OSError: the disk refused. The old files stay.
        """
        from .._core.knownhosts import cluster_trust_lines, merge_known_hosts

        paths = self.paths_for(profile)
        by_name = {name: (keys, pems) for name, keys, pems in cas}
        clusters = (profile.root_cluster, *sorted(n for n in by_name if n != profile.root_cluster))
        # The root's host CA also for the leaves' names (docs/protocol.md §14.4).
        known_lines = cluster_trust_lines(
            profile.proxy_host, profile.root_cluster, {name: by_name[name][0] for name in clusters}
        )
        with self.transaction():
            if self._load(profile.proxy_host) != profile:
                raise ProfileError(f"the profile {profile.name} changed meanwhile; log in again")
            try:
                known_hosts = _fs.read_text(paths.known_hosts)
            except FileNotFoundError:
                known_hosts = ""
            saved = profile._replace(clusters=clusters)
            with _fs.StagedFiles() as staged:
                for name in clusters:
                    if by_name[name][1]:
                        staged.stage(paths.tls_ca(name), "".join(by_name[name][1]))
                staged.stage(paths.certs_pem, "".join(p for n in clusters for p in by_name[n][1]))
                staged.stage(
                    paths.known_hosts,
                    merge_known_hosts(known_hosts, profile.proxy_host, known_lines),
                )
                staged.stage(paths.profile_file, saved.to_json())
                staged.commit()
        return saved

    def save_reissue(self, profile: Profile, cluster: str, ssh_cert: str, tls_cert: str) -> None:
        """Save certificates reissued for ``cluster`` (`tsh login <leaf>`) and select it.

        ``profile`` is the new profile (its ``cluster`` is ``cluster``, its
        certificate facts the new certificate's); the SSH certificate goes to
        ``<user>-ssh/<cluster>-cert.pub``, the TLS one replaces the user's
        (real tsh's key ring holds one TLS certificate: the selected cluster's).

        Raises:
            ProfileError, OSError: as :meth:`save_trusted_cas`; the old files stay.
        """
        paths = self.paths_for(profile)
        with self.transaction():
            with _fs.StagedFiles() as staged:
                staged.stage(paths.ssh_cert(cluster), ssh_cert)
                if tls_cert:
                    legacy = paths.tls_cert_legacy.exists() or not paths.tls_cert.exists()
                    staged.stage(paths.tls_cert_legacy if legacy else paths.tls_cert, tls_cert)
                staged.stage(paths.profile_file, profile.to_json())
                staged.stage(paths.current_profile, f"{profile.name}\n")
                staged.commit()

    def cert_clusters(self, proxy_host: str, user: str) -> set[str]:
        """The clusters ``user`` has an SSH certificate of ``proxy_host``'s for on disk."""
        cert_dir = self.paths(proxy_host, user).ssh_cert_dir
        if cert_dir.is_symlink() or not cert_dir.is_dir():
            return set()
        return {p.name[: -len("-cert.pub")] for p in cert_dir.glob("*-cert.pub")}

    def key_users(self) -> dict[str, list[str]]:
        """Every proxy host with a keys directory, and the users with certificates there."""
        keys_root = self.home / "keys"
        if not keys_root.is_dir() or keys_root.is_symlink():
            return {}
        return {
            proxy_dir.name: sorted(d.name[: -len("-ssh")] for d in proxy_dir.glob("*-ssh"))
            for proxy_dir in sorted(keys_root.iterdir())
            if proxy_dir.is_dir() and not proxy_dir.is_symlink()
        }

    def remove_user(self, proxy_host: str, user: str) -> frozenset[str] | None:
        """Remove ``user``'s keys, certificates and keyring entries for ``proxy_host``.

        The profile goes too when it is this user's (and current-profile when
        it names it); the keys directory and the proxy's known_hosts lines go
        with the last user. Returns the clusters the user had certificates
        for, or None when none of their files was there.
        """
        if not self.home.is_dir():
            return None
        from .._core.knownhosts import merge_known_hosts

        paths = self.paths(proxy_host, user)
        removed = False
        with self.transaction():
            try:
                profile = self._load(proxy_host)
            except ProfileError:
                profile = None
            ours = profile is not None and profile.user == user
            clusters = self.cert_clusters(proxy_host, user)
            if profile is not None and ours:
                clusters |= {profile.cluster, *profile.clusters}
            self._forget_keys(proxy_host, user, clusters)
            for path in (
                paths.private_key,
                paths.public_key,
                paths.tls_key,
                paths.tls_cert,
                paths.tls_cert_legacy,
                paths.ssh_cert_dir,
            ):
                removed |= _remove_tree(path)
            if ours:
                removed |= _fs.remove_file(paths.profile_file)
                if self.current_name() == proxy_host:
                    _fs.remove_file(paths.current_profile)
            keys_dir = paths.keys_dir
            if keys_dir.is_dir() and not keys_dir.is_symlink():
                if not any(p.name.endswith("-ssh") for p in keys_dir.iterdir()):
                    _remove_tree(keys_dir)
                    try:
                        known = _fs.read_text(paths.known_hosts)
                    except FileNotFoundError:
                        pass
                    else:
                        _fs.atomic_write(paths.known_hosts, merge_known_hosts(known, proxy_host, []))
        return frozenset(clusters) if removed else None

    def remove_all(self) -> frozenset[str] | None:
        """Remove every profile, key and keyring entry: all of home but ``config``, ``azure``.

        Returns the proxy hosts there were profiles or keys for, or None when
        there was nothing to remove.
        """
        if not self.home.is_dir():
            return None
        with self.transaction():
            profiles = self.list()
            identities = {
                (p.proxy_host, p.user, c) for p in profiles for c in {p.cluster, *p.clusters}
            }
            keys = self.key_users()
            for proxy, users in keys.items():
                for user in users:
                    identities |= {(proxy, user, c) for c in self.cert_clusters(proxy, user)}
            for proxy, user, cluster in identities:
                self._forget_keys(proxy, user, {cluster})
            removed = False
            for entry in self.home.iterdir():
                if entry.name not in _KEEP:
                    removed |= _remove_tree(entry)
        return frozenset({p.proxy_host for p in profiles} | set(keys)) if removed else None

    def _forget_keys(self, proxy_host: str, user: str, clusters: set[str]) -> None:
        """Delete ``user``'s keyring entries, if they have any: call before removing key files.

        Only a login whose key is kept off disk puts a key into the keyring.
        """
        if not clusters or self.paths(proxy_host, user).private_key.exists():
            return
        from . import secrets as _secrets

        for cluster in clusters:
            _secrets.delete_key(proxy_host, user, cluster)

    def current_name(self) -> str | None:
        """Name of the current profile, or None."""
        try:
            name = _fs.read_text(os.path.join(self._home, "current-profile")).strip()
        except FileNotFoundError:
            return None
        return name or None

    def load(self, proxy_host: str) -> Profile:
        """Load the profile named ``proxy_host``.

        Raises:
            ProfileError: there is none, or the file is corrupt or another
                proxy's (the message names the file and how to remove it).
        """
        profile = self._load(proxy_host)
        if profile is None:
            raise ProfileError(f"no profile for {proxy_host}")
        return profile

    def _load(self, proxy_host: str) -> Profile | None:
        """The profile named ``proxy_host``, None if there is none; ProfileError if corrupt."""
        path = os.path.join(self._home, f"{proxy_host}.yaml")
        try:
            text = _fs.read_text(path)
        except FileNotFoundError:
            return None
        return _named(Profile.from_json(text, source=path), proxy_host, path)

    def current(self) -> Profile | None:
        """The current profile, or None when not logged in.

        Raises:
            ProfileError: the current profile's file is corrupt.
        """
        name = self.current_name()
        return None if name is None else self._load(name)

    def select(self, proxy: str | None) -> Profile:
        """The profile for ``proxy`` (``HOST[:PORT]``), else the current one.

        Raises:
            UsageError: ``proxy`` is not a valid address.
            NotLoggedInError: there is no such profile.
            ProfileError: its file is corrupt.
        """
        if not proxy:
            profile = self.current()
            if profile is None:
                raise NotLoggedInError("not logged in", "<proxy>")
            return profile
        host, _ = parse_proxy_arg(proxy)  # a validated host name: "../x" names no file
        profile = self._load(host)
        if profile is None:
            raise NotLoggedInError(f"not logged in to {host}", proxy)
        return profile

    def list(self, problems: list[ProfileError] | None = None) -> list[Profile]:
        """Every loadable profile, the current one first, then by name.

        Corrupt profile files are left out, and their errors appended to
        ``problems`` when given.
        """
        if not self.home.is_dir():
            return []
        current = self.current_name()
        profiles = []
        for path in sorted(self.home.glob("*.yaml")):
            if path.is_symlink():
                continue
            try:
                text = _fs.read_text(path)
                profiles.append(_named(Profile.from_json(text, source=str(path)), path.stem, str(path)))
            except ProfileError as e:
                if problems is not None:
                    problems.append(e)
            except OSError:
                continue
        profiles.sort(key=lambda p: (p.name != current, p.name))
        return profiles


def _remove_tree(path: Path) -> bool:
    """Remove a file, symlink or directory tree (never following a symlink)."""
    if path.is_symlink() or path.is_file():
        return _fs.remove_file(path)
    if path.is_dir():
        import shutil  # here: reading a profile must start fast

        shutil.rmtree(path)
        return True
    return False


def _named(profile: Profile, name: str, path: str) -> Profile:
    """``profile``, if it is the one its file name says (its name names its key files)."""
    if profile.name != name:
        raise ProfileError(
            f"the profile {path} is for {profile.name}, not {name}; "
            f"run tsh logout, or delete {path}"
        )
    return profile
