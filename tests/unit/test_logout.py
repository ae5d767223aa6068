"""tsh._auth.logout on disk (keyring absent; the agent in one test): what goes, what stays."""

from __future__ import annotations

from pathlib import Path

import pytest
from _login_fakes import FakeProxy, ScriptedPrompter

from tsh._auth.login import LoginRequest, login
from tsh._auth.logout import logout_all, logout_user
from tsh._store.store import ProfileStore


def _login(store: ProfileStore, host: str, user: str) -> None:
    login(
        LoginRequest(proxy=f"{host}:3080", user=user, agent_mode="no"),
        ScriptedPrompter(),
        store=store,
        transport=FakeProxy().transport,
        environ={},
    )


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / "tsh")


def test_logout_one_user(store: ProfileStore) -> None:
    _login(store, "a.test", "alice")
    _login(store, "b.test", "bob")
    result = logout_user(store, "a.test", "alice", environ={})
    assert result.removed and result.warnings == []
    assert not (store.home / "keys" / "a.test").exists()
    assert not (store.home / "a.test.yaml").exists()
    assert [p.name for p in store.list()] == ["b.test"]
    known = (store.home / "known_hosts").read_text()
    assert "a.test," not in known and "@cert-authority b.test," in known
    assert not logout_user(store, "a.test", "alice", environ={}).removed


def test_logout_keeps_other_user_of_same_proxy(store: ProfileStore) -> None:
    _login(store, "a.test", "bob")
    _login(store, "a.test", "alice")  # the profile now names alice; bob's keys remain
    assert logout_user(store, "a.test", "bob", environ={}).removed
    assert store.current() is not None and store.current().user == "alice"
    assert store.paths("a.test", "alice").private_key.exists()
    assert "@cert-authority a.test," in (store.home / "known_hosts").read_text()


def test_logout_all_keeps_config_dir(store: ProfileStore) -> None:
    assert not logout_all(store, environ={}).removed
    _login(store, "a.test", "alice")
    (store.home / "config").mkdir()
    (store.home / "config" / "config.yaml").write_text("x: 1\n")
    assert logout_all(store, environ={}).removed
    assert sorted(p.name for p in store.home.iterdir()) == [".lock", "config"]
    assert not logout_all(store, environ={}).removed


def test_keyring_entries_go_only_for_logins_without_a_key_file(store, monkeypatch) -> None:
    from tsh._store import secrets as _secrets

    deleted: list[tuple[str, str, str]] = []
    monkeypatch.setattr(_secrets, "delete_key", lambda *account: deleted.append(account) or True)
    _login(store, "a.test", "alice")  # key file on disk: nothing in the keyring
    _login(store, "b.test", "bob")
    _login(store, "c.test", "carol")
    for host, user in (("b.test", "bob"), ("c.test", "carol")):  # as `-k only` leaves them
        store.paths(host, user).private_key.unlink()
    cluster = store.load("b.test").cluster
    assert logout_user(store, "a.test", "alice", environ={}).removed
    assert deleted == []
    assert logout_user(store, "b.test", "bob", environ={}).removed
    assert deleted == [("b.test", "bob", cluster)]
    deleted.clear()
    assert logout_all(store, environ={}).removed
    assert deleted == [("c.test", "carol", cluster)]


def _agent_comments(sock: str) -> list[str]:
    import subprocess

    listed = subprocess.run(
        ["ssh-add", "-l"], capture_output=True, text=True, env={"SSH_AUTH_SOCK": sock}
    )  # "256 SHA256:... teleport:...:alice (ED25519)", the same for its certificate
    if listed.returncode == 1:  # "The agent has no identities."
        return []
    return sorted({line.split(" ", 2)[2].rsplit(" ", 1)[0] for line in listed.stdout.splitlines()})


def test_logout_removes_agent_keys_of_an_ipv6_proxy(store: ProfileStore, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    environ = {"SSH_AUTH_SOCK": ssh_agent.sock}
    for proxy in ("[::1]:3080", "b.test:3080"):
        login(
            LoginRequest(proxy=proxy, user="alice", agent_mode="yes"),
            ScriptedPrompter(), store=store, transport=FakeProxy().transport, environ=environ,
        )  # fmt: skip
    assert _agent_comments(ssh_agent.sock) == [
        "teleport:::1:example.test:alice", "teleport:b.test:example.test:alice"
    ]
    assert logout_user(store, "::1", "alice", environ=environ).removed
    assert _agent_comments(ssh_agent.sock) == ["teleport:b.test:example.test:alice"]
    assert logout_all(store, environ=environ).removed
    assert _agent_comments(ssh_agent.sock) == []
