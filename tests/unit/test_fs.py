"""tsh._store.fs: atomic, private, symlink-refusing file primitives."""

from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from tsh import ProfileError
from tsh._store.fs import (
    atomic_write,
    ensure_private_dir,
    ensure_private_home,
    locked,
    read_text,
    remove_file,
)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_dir_is_0700_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        ensure_private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700


def test_private_dir_narrows_a_wide_existing_dir(tmp_path):
    d = tmp_path / "wide"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    ensure_private_dir(d)
    assert mode(d) == 0o700


def test_private_dir_refuses_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ProfileError, match="not a real directory"):
        ensure_private_dir(tmp_path / "link")


def _linked_home(tmp_path, mode=0o700):
    """``home`` -> ``dotfiles/tsh`` (a real directory with ``mode``), as dotfiles managers do."""
    target = tmp_path / "dotfiles" / "tsh"
    target.mkdir(parents=True)
    os.chmod(target, mode)
    link = tmp_path / "home"
    link.symlink_to(target)
    return link, target


def test_home_may_be_a_link_to_a_private_dir_of_ours(tmp_path):
    link, target = _linked_home(tmp_path, 0o755)
    ensure_private_home(link)
    assert link.is_symlink() and mode(target) == 0o700  # narrowed, as a real home is


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")


@pytest.mark.parametrize(
    "spoil, needle",
    [
        (lambda link, t: os.chmod(t, 0o770), "others can write to (mode 0770); check its "
         "contents, then: chmod 700"),
        (lambda link, t: os.chmod(t, 0o1777), "others can write to (mode 1777)"),
        (lambda link, t: t.rmdir(), "which does not exist; create it: mkdir -m 700"),
        (lambda link, t: (t.rmdir(), t.write_text("")), "which is not a directory"),
        pytest.param(lambda link, t: os.chown(t, 65534, 65534), "which is owned by uid 65534, "
                     "not you; point TELEPORT_HOME at a directory of your own", marks=ROOT_ONLY),
        pytest.param(lambda link, t: os.lchown(link, 65534, 65534), "is a symbolic link owned by "
                     "uid 65534, not you", marks=ROOT_ONLY),
    ],
    ids=["group-writable", "world-writable", "dangling", "to-a-file", "target-not-ours",
         "link-not-ours"],
)  # fmt: skip
def test_unsafe_home_link_is_refused_saying_why_and_what_to_do(tmp_path, spoil, needle):
    link, target = _linked_home(tmp_path)
    spoil(link, target)
    with pytest.raises(ProfileError, match=f"^refusing to use {link}: ") as e:
        ensure_private_home(link)
    assert needle in str(e.value)
    assert link.is_symlink() and not (target.is_dir() and any(target.iterdir()))


def test_atomic_write_sets_mode_and_replaces(tmp_path):
    path = tmp_path / "key"
    old = os.umask(0)
    try:
        atomic_write(path, "one")
        atomic_write(path, b"two", mode=0o644)
    finally:
        os.umask(old)
    assert path.read_text() == "two"
    assert mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temp files left behind


def test_atomic_write_refuses_symlink_and_leaves_target_alone(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious")
    (tmp_path / "key").symlink_to(target)
    with pytest.raises(ProfileError, match="symbolic link"):
        atomic_write(tmp_path / "key", "evil")
    assert target.read_text() == "precious"


def test_read_text_refuses_symlink(tmp_path):
    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(ProfileError, match="symbolic link"):
        read_text(tmp_path / "link")
    assert read_text(tmp_path / "target") == "x"


def test_remove_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert remove_file(tmp_path / "f") is True
    assert remove_file(tmp_path / "f") is False


def _increment(lock_path, counter_path, n):
    for _ in range(n):
        with locked(lock_path):
            value = int(counter_path.read_text())
            counter_path.write_text(str(value + 1))


def test_lock_serialises_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_increment, args=(tmp_path / ".lock", counter, 50)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert int(counter.read_text()) == 200
    assert mode(tmp_path / ".lock") == 0o600


def test_lock_times_out_with_a_clear_error(tmp_path):
    lock = tmp_path / ".lock"
    with locked(lock):
        # flock locks belong to open file descriptions: a second open contends.
        with pytest.raises(ProfileError, match="another tsh has held"):
            with locked(lock, timeout=0.05):
                pass
    with locked(lock, timeout=0.05):  # free again
        pass
