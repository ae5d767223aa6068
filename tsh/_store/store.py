"""The profile store: tsh's home directory on disk.

Home is ``$TELEPORT_HOME`` if set, else platformdirs' user data directory for
``tsh-py``. Reads never take the lock (every file is replaced atomically);
writers hold ``<home>/.lock`` for the whole multi-file update.

What `tsh proxy ssh` uses on every connection (finding and reading a
profile) works on str paths, so that it does not import pathlib (start-up time).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .._core.addr import split_host_port
from .._core.profile import Profile
from .._exceptions import NotLoggedInError, ProfileError, UsageError
from . import fs as _fs
from .layout import ProfilePaths

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ProfileStore", "default_home", "parse_proxy_arg"]


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
                raise NotLoggedInError("not logged in; run: tsh login --proxy=<proxy>")
            return profile
        host, _ = parse_proxy_arg(proxy)  # a validated host name: "../x" names no file
        profile = self._load(host)
        if profile is None:
            raise NotLoggedInError(f"not logged in to {host}; run: tsh login --proxy={proxy}")
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


def _named(profile: Profile, name: str, path: str) -> Profile:
    """``profile``, if it is the one its file name says (its name names its key files)."""
    if profile.name != name:
        raise ProfileError(
            f"the profile {path} is for {profile.name}, not {name}; "
            f"run tsh logout, or delete {path}"
        )
    return profile
