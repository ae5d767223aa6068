"""tsh._auth.login against an in-memory proxy: order, files, checks, and failure atomicity.

The agent is off here (mode "no", empty environment); tests/integration covers
the real ssh-agent, the keyring and the test cluster.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import asyncssh
import httpx
import pytest
from _login_fakes import FakeProxy, ScriptedPrompter, b64, sign_user_cert

from tsh import (
    AccessDeniedError,
    CertificateError,
    InvalidNameError,
    ProfileError,
    ProxyResponseError,
    UsageError,
)
from tsh._auth.login import LoginRequest, login
from tsh._store.store import ProfileStore


def _login(
    store: ProfileStore, proxy: FakeProxy, prompter: ScriptedPrompter | None = None, **kw: object
):  # type: ignore[no-untyped-def]
    request = LoginRequest(
        proxy=str(kw.pop("addr", "proxy.test:3080")), user="alice", agent_mode="no", **kw
    )  # type: ignore[arg-type]
    return login(
        request, prompter or ScriptedPrompter(), store=store, transport=proxy.transport, environ={}
    )


def snapshot(home: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for root, dirs, files in os.walk(home):
        for name in files + dirs:
            p = Path(root, name)
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) and name != ".lock" else b""
            out[str(p.relative_to(home))] = (data, stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / "tsh")


def test_v17_login_layout_and_facts(store: ProfileStore) -> None:
    proxy = FakeProxy()
    old_umask = os.umask(0)
    try:
        result = _login(store, proxy)
    finally:
        os.umask(old_umask)
    p = result.profile
    assert (p.web_proxy_addr, p.ssh_proxy_addr) == ("proxy.test:3080", "proxy.test:3023")
    assert (p.cluster, p.root_cluster, p.clusters) == (
        "example.test",
        "example.test",
        ("example.test",),
    )
    assert p.logins == ("root", "alice") and p.roles == ("access",)
    assert p.valid_before - p.valid_after == 12 * 3600 + 60  # the proxy's default TTL
    paths = store.paths("proxy.test", "alice")
    key = asyncssh.read_private_key(paths.private_key)
    cert = asyncssh.read_certificate(paths.ssh_cert("example.test"))
    assert key.algorithm == b"ssh-ed25519" and cert.key.public_data == key.public_data
    assert paths.tls_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert paths.tls_cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert not paths.tls_cert_legacy.exists()
    assert paths.tls_ca("example.test").read_text() == paths.certs_pem.read_text()
    (line,) = paths.known_hosts.read_text().splitlines()
    assert line.startswith("@cert-authority proxy.test,example.test,*.example.test ssh-ed25519 ")
    assert store.current_name() == "proxy.test" and store.load("proxy.test") == p
    for rel, (_, mode) in snapshot(store.home).items():
        is_dir = (store.home / rel).is_dir()
        assert mode == (0o700 if is_dir else 0o600), rel
    body = proxy.login_bodies[0]
    assert "pub_key" not in body and body["user"] == "alice" and body["otp_token"] == ""
    assert "PRIVATE" not in json.dumps(body)


def test_v16_login_uses_rsa_and_legacy_files(store: ProfileStore) -> None:
    proxy = FakeProxy(server_version="16.4.2")
    _login(store, proxy, ttl_minutes=30)
    paths = store.paths("proxy.test", "alice")
    key = asyncssh.read_private_key(paths.private_key)
    assert key.algorithm == b"ssh-rsa" and key.pyca_key.key_size == 2048
    assert paths.tls_cert_legacy.exists() and not paths.tls_key.exists()
    body = proxy.login_bodies[0]
    assert set(body) >= {"pub_key", "ttl"} and "ssh_pub_key" not in body
    assert body["ttl"] == 30 * 60 * 10**9


def test_otp_flow_prompts_for_both(store: ProfileStore) -> None:
    prompter = ScriptedPrompter()
    _login(store, FakeProxy(second_factor="otp"), prompter)
    assert prompter.asked == ["password:alice", "otp"]
    prompter = ScriptedPrompter()
    _login(store, FakeProxy(), prompter)
    assert prompter.asked == ["password:alice"]


def test_otp_typed_in_groups_is_sent_without_spaces(store: ProfileStore) -> None:
    proxy = FakeProxy(second_factor="otp", otp="440061")
    _login(store, proxy, ScriptedPrompter(otp=" 440 061\t"))
    assert proxy.login_bodies[0]["otp_token"] == "440061"


@pytest.mark.parametrize("factor", ["webauthn", "u2f"])
def test_unsupported_second_factor_fails_before_prompt(store: ProfileStore, factor: str) -> None:
    prompter = ScriptedPrompter()
    with pytest.raises(UsageError, match="security key"):
        _login(store, FakeProxy(second_factor=factor), prompter)
    assert prompter.asked == []


@pytest.mark.parametrize("version", ["16.4.0", "17.0.0"])
def test_login_takes_an_authenticator(store: ProfileStore, version: str) -> None:
    from tsh._auth.authenticators import PasswordAuthenticator

    seen: list[tuple[object, ...]] = []

    class Recording:  # what an SSO authenticator will get
        def authenticate(self, ping, user, client, keys, ttl_seconds, cluster):  # type: ignore[no-untyped-def]
            seen.append((ping.cluster_name, user, keys, ttl_seconds, cluster))
            password = PasswordAuthenticator(lambda _user: "secret-pw", lambda: "unused")
            return password.authenticate(ping, user, client, keys, ttl_seconds, cluster)

    proxy = FakeProxy(server_version=version)
    request = LoginRequest(proxy="proxy.test:3080", user="alice", agent_mode="no", ttl_minutes=5)
    result = login(request, Recording(), store=store, transport=proxy.transport, environ={})
    ((cluster_name, user, keys, ttl, route),) = seen
    assert (cluster_name, user, ttl, route) == ("example.test", "alice", 300.0, "")
    assert keys.ssh.startswith("ssh-ed25519 " if version == "17.0.0" else "ssh-rsa ")
    assert (keys.tls is None) == (version == "16.4.0")
    assert result.profile.user == "alice"
    assert store.paths("proxy.test", "alice").public_key.read_text() == keys.ssh


def test_password_authenticator_refuses_sso_before_asking(store: ProfileStore) -> None:
    proxy = FakeProxy()
    ping = proxy.ping_json()
    ping["auth"]["type"] = "github"
    ping["auth"]["github"] = {"name": "github", "display": "GitHub", "EndpointURL": ""}
    proxy.ping_raw = (200, json.dumps(ping).encode(), "application/json")
    prompter = ScriptedPrompter()
    with pytest.raises(UsageError, match="github single sign-on"):
        _login(store, proxy, prompter)
    assert prompter.asked == [] and proxy.login_bodies == []


def test_not_a_proxy_fails_before_prompt(store: ProfileStore) -> None:
    proxy = FakeProxy()
    proxy.ping_raw = (200, b"<!doctype html><title>Login portal</title>", "text/html")
    prompter = ScriptedPrompter()
    with pytest.raises(ProxyResponseError, match="Teleport proxy"):
        _login(store, proxy, prompter)
    assert prompter.asked == [] and not store.home.exists()


def test_port_fallback_443_then_3080(store: ProfileStore) -> None:
    proxy = FakeProxy()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.port in (None, 443):  # httpx drops the default port
            raise httpx.ConnectError("Connection refused", request=request)
        return proxy.handle(request)

    request = LoginRequest(proxy="proxy.test", user="alice", agent_mode="no")
    result = login(
        request, ScriptedPrompter(), store=store, transport=httpx.MockTransport(handler), environ={}
    )
    assert result.profile.web_proxy_addr == "proxy.test:3080"
    assert [r.url.port for r in proxy.requests][:1] == [3080]


def _other_key_cert(proxy: FakeProxy):  # type: ignore[no-untyped-def]
    def hook(answer: dict, body: dict) -> None:
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        answer["cert"] = b64(sign_user_cert(proxy.user_ca, other, "alice", ["root"], 0, 2**40))

    return hook


HOSTILE = {
    "wrong password": (
        lambda p: None,
        ScriptedPrompter(password="nope"),
        AccessDeniedError,
        "invalid username or password",
    ),
    "wrong otp": (
        lambda p: setattr(p, "second_factor", "otp"),
        ScriptedPrompter(otp="000000"),
        AccessDeniedError,
        "second factor",
    ),
    "truncated json": (
        lambda p: setattr(p, "login_raw", (200, b'{"username": "alice", "ce', "application/json")),
        None,
        ProxyResponseError,
        "Teleport proxy",
    ),
    "deeply nested login json": (
        lambda p: setattr(p, "login_raw", (200, b"[" * 100_000 + b"]" * 100_000, "application/json")),
        None,
        ProxyResponseError,
        "Teleport proxy",
    ),
    "5000-digit session ttl": (
        lambda p: setattr(p, "default_ttl", "1" * 5000 + "h"),
        None,
        ProxyResponseError,
        "default_session_ttl",
    ),
    "html login": (
        lambda p: setattr(p, "login_raw", (502, b"<html>oops</html>", "text/html")),
        None,
        ProxyResponseError,
        "HTTP 502",
    ),
    "someone else's key": (
        lambda p: setattr(p, "login_hook", _other_key_cert(p)),
        None,
        CertificateError,
        "different key",
    ),
    "expired cert": (
        lambda p: setattr(p, "window", lambda now, ttl: (now - 7200, now - 3600)),
        None,
        CertificateError,
        "expired",
    ),
    "future cert": (
        lambda p: setattr(p, "window", lambda now, ttl: (now + 3600, now + 7200)),
        None,
        CertificateError,
        "clock",
    ),
    "hostile cluster name": (
        lambda p: setattr(
            p, "login_hook", lambda a, b: a["host_signers"][0].update(domain_name="*")
        ),
        None,
        ProxyResponseError,  # the proxy's fault, not the user's: refused where it is parsed
        "cluster name",
    ),
    "no host signers": (
        lambda p: setattr(p, "login_hook", lambda a, b: a.update(host_signers=[])),
        None,
        ProxyResponseError,
        "host CA",
    ),
    "tls cert for another key": (
        lambda p: setattr(
            p,
            "login_hook",
            lambda a, b: a.update(
                tls_cert=b64(
                    p.tls_ca.public_bytes(
                        __import__("cryptography").hazmat.primitives.serialization.Encoding.PEM
                    )
                )
            ),
        ),
        None,
        CertificateError,
        "TLS certificate",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_answers_leave_good_profile_untouched(store: ProfileStore, case: str) -> None:
    proxy = FakeProxy(second_factor="off")
    _login(store, proxy)
    before = snapshot(store.home)
    setup, prompter, error, needle = HOSTILE[case]
    setup(proxy)
    with pytest.raises(error) as e:
        _login(store, proxy, prompter)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)
    assert snapshot(store.home) == before


def test_login_through_a_symlinked_home(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "tsh"
    target.mkdir(parents=True, mode=0o700)
    (tmp_path / "tsh").symlink_to(target)
    result = _login(ProfileStore(tmp_path / "tsh"), FakeProxy())
    assert ProfileStore(target).load("proxy.test") == result.profile
    assert (target / "keys" / "proxy.test" / "alice").is_file()


def test_symlinked_key_path_is_refused(store: ProfileStore, tmp_path: Path) -> None:
    proxy = FakeProxy()
    _login(store, proxy)
    paths = store.paths("proxy.test", "alice")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    paths.private_key.unlink()
    paths.private_key.symlink_to(victim)
    before = snapshot(store.home)
    with pytest.raises(ProfileError, match="symbolic link"):
        _login(store, proxy)
    assert victim.read_text() == "precious\n"
    assert snapshot(store.home) == before


def test_symlinked_keys_dir_is_refused(store: ProfileStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store.home / "keys").mkdir(parents=True)
    (store.home / "keys" / "proxy.test").symlink_to(elsewhere)
    with pytest.raises(ProfileError):
        _login(store, FakeProxy())
    assert list(elsewhere.iterdir()) == []


def test_relogin_replaces_ca_lines_and_keys(store: ProfileStore) -> None:
    proxy = FakeProxy()
    _login(store, proxy)
    paths = store.paths("proxy.test", "alice")
    first_key = paths.private_key.read_bytes()
    proxy2 = FakeProxy()  # a rotated host CA
    _login(store, proxy2)
    lines = paths.known_hosts.read_text().splitlines()
    assert len(lines) == 1
    from _login_fakes import ssh_public_line

    from tsh._core.knownhosts import ca_lines

    assert lines == ca_lines(
        "proxy.test", "example.test", [ssh_public_line(proxy2.host_ca.public_key())]
    )
    assert paths.private_key.read_bytes() != first_key


def test_v17_to_v16_switch_removes_stale_files(store: ProfileStore) -> None:
    _login(store, FakeProxy())
    _login(store, FakeProxy(server_version="16.0.0"))
    paths = store.paths("proxy.test", "alice")
    assert paths.tls_cert_legacy.exists()
    assert not paths.tls_key.exists() and not paths.tls_cert.exists()


@pytest.mark.parametrize("proxy_arg", ["http://proxy.test", "proxy.test:99999", "a b", "*:3080"])
def test_bad_proxy_argument(store: ProfileStore, proxy_arg: str) -> None:
    with pytest.raises(UsageError):
        _login(store, FakeProxy(), addr=proxy_arg)


@pytest.mark.parametrize("user", ["../x", "a/b", "a:b", "a b", ".."])
def test_bad_user_name(store: ProfileStore, user: str) -> None:
    request = LoginRequest(proxy="proxy.test:3080", user=user, agent_mode="no")
    with pytest.raises(InvalidNameError):
        login(request, ScriptedPrompter(), store=store, transport=FakeProxy().transport, environ={})


def test_password_never_reaches_disk(store: ProfileStore) -> None:
    sentinel = "S3NT1NEL-pw"
    _login(store, FakeProxy(password=sentinel), ScriptedPrompter(password=sentinel))
    for rel, (data, _) in snapshot(store.home).items():
        assert sentinel.encode() not in data, rel
    assert base64.b64encode(sentinel.encode()) not in b"".join(
        d for d, _ in snapshot(store.home).values()
    )


@pytest.mark.parametrize("version", ["16.4.0", "17.0.0"])
def test_private_keys_stay_out_of_repr(version: str) -> None:
    from tsh._auth.login import _new_keys
    from tsh._store.store import LoginFiles

    keys = _new_keys(version)
    assert "PRIVATE KEY" not in repr(keys)
    assert keys.ssh_public.split()[1] in repr(keys)
    files = LoginFiles(
        private_key=keys.ssh_private, tls_key=keys.tls_private, public_key=keys.ssh_public,
        ssh_cert="cert", host_signers=[],
    )  # fmt: skip
    assert "PRIVATE KEY" not in repr(files) and keys.ssh_public.split()[1] in repr(files)


@pytest.mark.parametrize("minutes", [0, -5, 153_722_868, 10**400])
def test_ttl_out_of_range_is_refused_before_any_request(store: ProfileStore, minutes: int) -> None:
    proxy = FakeProxy()
    with pytest.raises(UsageError, match="^ttl must be") as e:
        _login(store, proxy, ttl_minutes=minutes)
    assert "--" not in str(e.value)  # the library names no command-line flag
    assert proxy.requests == []


def test_longest_ttl_fits_a_go_duration(store: ProfileStore) -> None:
    proxy = FakeProxy()
    proxy.login_raw = (403, b'{"error": {"message": "denied"}}', "application/json")
    with pytest.raises(AccessDeniedError):
        _login(store, proxy, ttl_minutes=153_722_867)
    assert 0 < proxy.login_bodies[0]["ttl"] <= 2**63 - 1


class FakeKeyring:
    """A keyring backend in memory (tsh._store.secrets only calls these three)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def set_password(self, service: str, account: str, secret: str) -> None:
        self.entries[service, account] = secret

    def get_password(self, service: str, account: str) -> str | None:
        return self.entries.get((service, account))

    def delete_password(self, service: str, account: str) -> None:
        del self.entries[service, account]


def _agent_keys(sock: str) -> list[str]:
    import subprocess

    listed = subprocess.run(
        ["ssh-add", "-L"], capture_output=True, text=True, env={"SSH_AUTH_SOCK": sock}
    )  # exit status 1: "The agent has no identities."
    return sorted(listed.stdout.splitlines()) if listed.returncode == 0 else []


def test_failed_commit_leaves_agent_and_keyring_as_they_were(
    store: ProfileStore, ssh_agent, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    from tsh._store import fs as _fs
    from tsh._store import secrets as _secrets

    keyring = FakeKeyring()
    monkeypatch.setattr(_secrets, "_backend", lambda: keyring)
    proxy = FakeProxy()

    def login_only(user: str):  # type: ignore[no-untyped-def]
        request = LoginRequest(proxy="proxy.test:3080", user=user, agent_mode="only")
        return login(
            request, ScriptedPrompter(), store=store, transport=proxy.transport,
            environ={"SSH_AUTH_SOCK": ssh_agent.sock},
        )  # fmt: skip

    assert login_only("alice").warnings == []
    agent, entries, files = _agent_keys(ssh_agent.sock), dict(keyring.entries), snapshot(store.home)
    assert len(agent) == 2 and len(entries) == 1  # the key and its certificate; one account

    def full_disk(self: _fs.StagedFiles) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(_fs.StagedFiles, "commit", full_disk)
        with pytest.raises(OSError, match="No space"):
            login_only("alice")  # again: the previous keyring entry must come back
        with pytest.raises(OSError, match="No space"):
            login_only("bob")  # a first login: nothing of bob's may stay
    assert _agent_keys(ssh_agent.sock) == agent
    assert keyring.entries == entries and snapshot(store.home) == files

    # A login that commits replaces alice's agent key (after the commit) and keyring entry.
    login_only("alice")
    new_agent = _agent_keys(ssh_agent.sock)
    assert len(new_agent) == 2 and not set(new_agent) & set(agent)
    assert keyring.entries.keys() == entries.keys() and keyring.entries != entries


def test_login_from_inside_a_running_event_loop(store: ProfileStore, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import tsh

    async def main() -> tsh.LoginResult:  # a library caller's async code
        request = tsh.LoginRequest(proxy="proxy.test:3080", user="alice", agent_mode="yes")
        return tsh.login(
            request, ScriptedPrompter(), store=store, transport=FakeProxy().transport,
            environ={"SSH_AUTH_SOCK": ssh_agent.sock},
        )  # fmt: skip

    result = asyncio.run(main())
    assert result.warnings == []
    cert = store.paths("proxy.test", "alice").ssh_cert("example.test").read_text().split()[1]
    assert any(line.split()[1] == cert for line in _agent_keys(ssh_agent.sock))
