"""Small, careful file primitives: private directories, atomic writes, locks.

Everything tsh stores goes through here, so that every file is written
atomically (a reader sees the old or the new content, never half of it),
private files are 0600 in 0700 directories whatever the umask, and nothing is
ever written through a symbolic link an attacker (or a confused user) planted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator

from .._exceptions import ProfileError

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from pathlib import Path

#: Seconds to wait for the store's write lock.
LOCK_TIMEOUT = 10.0

__all__ = [
    "ensure_private_dir",
    "ensure_private_home",
    "atomic_write",
    "read_text",
    "locked",
    "remove_file",
    "StagedFiles",
]


def ensure_private_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` (and missing parents) as real directories with ``mode``.

    Raises ProfileError if ``path`` exists and is a symlink or not a directory.
    Existing directories keep their mode unless it is wider than ``mode``.
    """
    if path.exists() or path.is_symlink():
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise ProfileError(f"refusing to use {path}: not a real directory")
        if stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
        return
    if not path.parent.exists():
        ensure_private_dir(path.parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return ensure_private_dir(path, mode)
    os.chmod(path, mode)  # mkdir's mode is filtered by the umask


def ensure_private_home(path: Path, mode: int = 0o700) -> None:
    """:func:`ensure_private_dir` for tsh's home, which may itself be a symbolic link.

    Dotfiles managers link ``~/.tsh``-like directories elsewhere. Such a link
    is used when it cannot be a trap: the link and the directory it resolves
    to are ours, and nobody else can write to that directory. Its mode is
    narrowed as a real home's would be. Links inside home are still refused.

    Raises:
        ProfileError: saying why the link is refused and what to do instead.
    """
    if not path.is_symlink():
        return ensure_private_dir(path, mode)
    target = os.path.realpath(path)
    refuse = f"refusing to use {path}: it is a symbolic link"
    uid, link_owner = os.geteuid(), os.lstat(path).st_uid
    if link_owner != uid:
        raise ProfileError(
            f"{refuse} owned by uid {link_owner}, not you; remove it, or point "
            "TELEPORT_HOME at a directory of your own"
        )
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        raise ProfileError(
            f"{refuse} to {target}, which does not exist; create it: mkdir -m 700 {target}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ProfileError(f"{refuse} to {target}, which is not a directory")
    if st.st_uid != uid:
        raise ProfileError(
            f"{refuse} to {target}, which is owned by uid {st.st_uid}, not you; point "
            "TELEPORT_HOME at a directory of your own"
        )
    bits = stat.S_IMODE(st.st_mode)
    if bits & (stat.S_IWGRP | stat.S_IWOTH):
        # Someone else may already have put files there: do not just chmod it.
        raise ProfileError(
            f"{refuse} to {target}, which others can write to (mode {bits:04o}); "
            f"check its contents, then: chmod 700 {target}"
        )
    if bits & ~mode:
        os.chmod(target, bits & mode)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    The content goes to a temporary file in the same directory, is fsynced and
    then renamed over ``path``. A symlink at ``path`` is refused, not followed.
    """
    with StagedFiles() as staged:
        staged.stage(path, data, mode)
        staged.commit()


class StagedFiles:
    """A group of files written completely before any of them replaces its target.

    ``stage()`` writes each file's content to a temporary file beside its
    target (refusing a symlink at the target); ``commit()`` then renames them
    all into place, ``discard()`` (or leaving a ``with`` block by an
    exception) deletes them. A failure while staging -- disk full, a planted
    symlink -- therefore leaves every existing file untouched.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, Path]] = []

    def stage(self, path: Path, data: bytes | str, mode: int = 0o600, mtime: int | None = None) -> None:
        """Write ``data`` (fsynced, ``mode``; ``mtime`` if given) to a temporary file beside ``path``."""
        if isinstance(data, str):
            data = data.encode()
        _refuse_symlink(path)
        import tempfile  # here, not at the top: reading a profile must start fast

        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self._staged.append((tmp, path))
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mtime is not None:
                os.utime(f.fileno(), (mtime, mtime))
            os.fsync(f.fileno())

    def commit(self) -> None:
        for _tmp, path in self._staged:
            _refuse_symlink(path)
        while self._staged:
            tmp, path = self._staged.pop(0)
            os.replace(tmp, path)

    def discard(self) -> None:
        while self._staged:
            tmp, _ = self._staged.pop()
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def read_text(path: str | Path) -> str:
    """Read a file tsh wrote, refusing to follow a symlink planted in its place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ProfileError(f"refusing to read {path}: it is a symbolic link") from None
        raise
    with os.fdopen(fd, encoding="utf-8") as f:
        return f.read()


def remove_file(path: Path) -> bool:
    """Remove ``path`` if it exists (a symlink itself, never its target)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def locked(lock_path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (created 0600) for the block.

    Raises:
        ProfileError: another process held the lock for ``timeout`` seconds
            (a hung tsh must not make every later one hang too).
    """
    _refuse_symlink(lock_path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:  # flock has no timeout of its own
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProfileError(
                        f"another tsh has held {lock_path} for {timeout:g} s; try again"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise ProfileError(f"refusing to write {path}: it is a symbolic link")
