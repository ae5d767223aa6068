"""tsh._agent.agent's pure parts: mode resolution, the comment format, the gpg-agent heuristic."""

from __future__ import annotations

import pytest

from tsh import UsageError
from tsh._agent.agent import agent_comment, parse_agent_comment, resolve_agent_mode, suspect_agent


@pytest.mark.parametrize(
    ("flag", "use_local", "env", "mode"),
    [
        (None, None, {}, "auto"),
        ("yes", None, {"TELEPORT_ADD_KEYS_TO_AGENT": "no"}, "yes"),
        (None, None, {"TELEPORT_ADD_KEYS_TO_AGENT": "only"}, "only"),
        ("ONLY", None, {}, "only"),
        ("yes", False, {}, "no"),
        ("auto", None, {"TELEPORT_USE_LOCAL_SSH_AGENT": "false"}, "no"),
        ("auto", True, {"TELEPORT_USE_LOCAL_SSH_AGENT": "false"}, "auto"),
    ],
)
def test_resolve(flag, use_local, env, mode) -> None:  # type: ignore[no-untyped-def]
    assert resolve_agent_mode(flag, use_local, env) == mode


def test_resolve_rejects() -> None:
    with pytest.raises(
        UsageError, match=r'invalid value "maybe", must be one of \[auto no yes only\]'
    ):
        resolve_agent_mode("maybe", None, {})
    with pytest.raises(UsageError, match="only"):
        resolve_agent_mode("only", False, {})


def test_comment_round_trip() -> None:
    c = agent_comment("proxy.test", "example.test", "alice")
    assert c == "teleport:proxy.test:example.test:alice"
    assert parse_agent_comment(c) == ("proxy.test", "example.test", "alice")
    for other in ("teleport:alice", "me@laptop", "teleport:a:b:c:d", "teleport::c:u", ""):
        assert parse_agent_comment(other) is None


@pytest.mark.parametrize("proxy", ["::1", "2001:db8::7", "fe80::1%eth0"])
def test_comment_round_trip_ipv6_proxy(proxy: str) -> None:
    c = agent_comment(proxy, "example.test", "alice")
    assert c == f"teleport:{proxy}:example.test:alice"  # as real tsh writes it
    assert parse_agent_comment(c) == (proxy, "example.test", "alice")


def test_gpg_heuristic() -> None:
    assert suspect_agent("/run/user/1000/gnupg/S.gpg-agent.ssh")
    assert suspect_agent("/tmp/gpg-agent.sock")
    assert suspect_agent("/tmp/ssh-XXXX/agent.123") is None


def test_an_agent_that_hangs_up_is_an_agent_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """asyncssh reports a hung-up agent as ValueError; the library says AgentError."""
    import socket
    import threading
    import time

    import asyncssh

    from tsh import AgentError
    from tsh._agent.agent import load_into_agent

    sock = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock)
    server.listen(5)

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    key = asyncssh.generate_private_key("ssh-ed25519")
    ca = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_user_certificate(key, "alice", principals=["alice"])
    try:
        with pytest.raises(AgentError):
            load_into_agent(
                sock,
                key.export_private_key().decode(),
                cert.export_certificate().decode(),
                "teleport:p:c:alice",
                int(time.time()) + 600,
            )
    finally:
        server.close()
