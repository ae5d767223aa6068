"""Hop reuse under TLS routing, the parts without sockets: the master is dialled as the hop
would be, its socket names the dial, and the ride path reads failures like the lone hop."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsh._core.profile import Profile
from tsh._openssh.reuse import PERSIST_SECONDS
from tsh._proxy import command, mux
from tsh._proxy.dial import dial_for
from tsh._store.layout import ProfilePaths

WEB = "proxy.example.com:443"


def _profile(**changes: object) -> Profile:
    base = Profile(web_proxy_addr=WEB, ssh_proxy_addr=WEB, user="alice", cluster="example.test",
                   root_cluster="example.test", tls_routing_enabled=True)  # fmt: skip
    return base._replace(**changes)


@pytest.mark.parametrize(
    ("changes", "env", "expected"),
    [
        ({"tls_routing_enabled": False, "ssh_proxy_addr": "proxy.example.com:3023"}, {}, ("tcp", None)),
        ({}, {}, ("tls", None)),
        ({"tls_routing_conn_upgrade_required": True}, {}, ("upgrade", "websocket")),
        ({}, {"TELEPORT_TLS_ROUTING_CONN_UPGRADE": f"{WEB}=yes"}, ("upgrade", "websocket")),
        ({}, {"TELEPORT_TLS_ROUTING_CONN_UPGRADE": "1",
              "TELEPORT_TLS_ROUTING_CONN_UPGRADE_MODE": "legacy"}, ("upgrade", "legacy")),
    ],
)  # fmt: skip
def test_the_dial_says_which_upgrade(changes, env, expected) -> None:  # type: ignore[no-untyped-def]
    paths = ProfilePaths(Path("/home/alice/.tsh"), "proxy.example.com", "alice")
    dial = dial_for(_profile(**changes), paths, {"PATH": "", **env})
    assert (dial.mode, dial.upgrade) == expected
    if dial.upgrade:
        assert f"--upgrade={dial.upgrade}" in dial.options[1]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a name short enough for control sockets (tmp_path's is not)."""
    with tempfile.TemporaryDirectory(prefix="mux", dir="/tmp") as d:
        yield Path(d)


def _tag(tmp_path: Path) -> str:
    mux_dir = tmp_path / "mux"
    mux_dir.mkdir(exist_ok=True)
    tag = tmp_path / "reuse"
    tag.write_text(f"{int(time.time()) + 3600} {mux_dir}/0123456789abcdef\n")
    return str(tag)


def test_each_dial_has_its_own_master(short_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(mux, "_listening", lambda path: True)  # a master listens on every name
    tag = _tag(short_dir)

    def name(dial: tuple[str, str | None]) -> str:
        master = mux.master_for(tag, "root", {}, None, dial)
        assert master is not None and master.persist is None  # to ride
        return Path(master.path).name

    names = {dial: name(dial) for dial in (("tcp", None), ("tls", None), ("upgrade", "websocket"),
                                           ("upgrade", "legacy"))}  # fmt: skip
    assert names == {
        ("tcp", None): "0123456789abcdef+root",  # as before TLS routing
        ("tls", None): "0123456789abcdef+t+root",
        ("upgrade", "websocket"): "0123456789abcdef+w+root",
        ("upgrade", "legacy"): "0123456789abcdef+l+root",
    }
    assert mux.master_for(tag, "root", {}, None, ("upgrade", "other")) is None


def test_a_hop_that_finds_no_master_becomes_it(short_dir) -> None:  # type: ignore[no-untyped-def]
    tag = _tag(short_dir)
    master = mux.master_for(tag, "root", {}, None, ("tcp", None))
    assert master is not None and master.persist == PERSIST_SECONDS  # the certificate has an hour
    hop = ["ssh", "-o", "ForwardAgent=yes", "-p", "3023", "-l", "root", "-s", "proxy", "proxy:n:22@c"]
    argv = master.hop_argv(hop)
    assert argv[argv.index("-S") + 1] == master.path
    assert "ControlMaster=yes" in argv and f"ControlPersist={master.persist}" in argv
    assert argv[-5:] == hop[-5:] and "ForwardAgent=yes" in argv  # `-k only`: the user's agent
    # Another hop meanwhile waits for the lock (it would ride once the master listens).
    import fcntl
    import os

    fd = os.open(master.path + ".lock", os.O_WRONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        master.release()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go
    finally:
        os.close(fd)


def test_the_ride_dials_as_the_hop_and_explains_tls_failures(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    profile = _profile()
    paths = ProfilePaths(tmp_path, "proxy.example.com", "alice")
    for f in (paths.known_hosts, paths.ssh_cert("example.test"), paths.private_key):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")

    class Store:
        def select(self, proxy: str | None) -> Profile:
            return profile

        def paths_for(self, p: Profile, as_str: bool = False) -> ProfilePaths:
            return paths

    masters: list[tuple[object, ...]] = []
    def master_for(*args: object) -> mux.Master:
        masters.append(args)  # two rides, then two hops that become the master
        return mux.Master("/run/sock", persist=600 if len(masters) > 2 else None)

    runs: list[tuple[list[str], dict[str, object]]] = []

    def run(self: command.HopSupervisor, **kwargs: object) -> int:
        runs.append((self.argv, kwargs))
        return 0

    monkeypatch.setattr(command, "ProfileStore", Store)
    monkeypatch.setattr(mux, "master_for", master_for)
    monkeypatch.setattr(command.HopSupervisor, "run", run)
    env = {"TELEPORT_TLS_ROUTING_CONN_UPGRADE": f"{WEB}=yes"}
    for _ in range(2):
        for extra in ({}, env):
            monkeypatch.delenv("TELEPORT_TLS_ROUTING_CONN_UPGRADE", raising=False)
            for k, v in extra.items():
                monkeypatch.setenv(k, v)
            assert command.proxy_ssh("root@node1:22") == 0
    dials = [dial_for(profile, paths, {}), dial_for(profile, paths, env)] * 2
    for (_tag_path, login, _env, _agent, dial_key), dial, mode in zip(
        masters, dials, ("tls", "upgrade") * 2, strict=True
    ):
        assert login == "root" and dial_key == (mode, dial.upgrade)
    for i, ((argv, kwargs), dial) in enumerate(zip(runs, dials, strict=True)):
        assert argv[argv.index("-S") + 1] == "/run/sock" and " ".join(dial.options) in " ".join(argv)
        assert kwargs["proxy_addr"] == WEB  # (the tunnel names the CA file itself)
        # A new master's ProxyCommand says nothing (OpenSSH sends its stderr to
        # /dev/null with ControlPersist): its drops are diagnosed on every dial.
        # Any other hop's tunnel says itself why it failed.
        assert (kwargs["diagnose"] is not None) is (i >= 2)
