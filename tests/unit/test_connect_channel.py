"""tsh._connect without sockets: the channel adapter and the proxy's messages."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from tsh._connect import _host_key_check, _one_line, _TunnelSession


class FakeProtocol:
    """Records what asyncssh's node connection would be told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def connection_made(self, transport: object) -> None:
        self.events.append(("made", transport))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> None:
        self.events.append(("eof", None))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))


class FakeChannel:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_node_handshake_starts_after_the_subsystem_request_is_sent() -> None:
    async def go() -> list[str]:
        proto = FakeProtocol()
        session = _TunnelSession(proto)
        session.connection_made(FakeChannel())  # type: ignore[arg-type]
        # asyncssh sends the subsystem request now, before yielding to the loop.
        before = [kind for kind, _ in proto.events]
        await asyncio.sleep(0)
        session.session_started()  # the proxy's answer: the handshake is not started twice
        return before + ["|"] + [kind for kind, _ in proto.events]

    assert asyncio.run(go()) == ["|", "made"]


def test_proxy_stderr_is_kept_apart_from_the_node_stream() -> None:
    proto = FakeProtocol()
    session = _TunnelSession(proto)
    chan = FakeChannel()
    session.chan = chan  # type: ignore[assignment]
    session.session_started()
    session.data_received(b"SSH-2.0-node\r\n", None)
    session.data_received(b"failed connecting to node\n", asyncssh.EXTENDED_DATA_STDERR)
    session.eof_received()

    kinds = [kind for kind, _ in proto.events]
    assert kinds == ["made", "data", "eof"]
    assert proto.events[1] == ("data", b"SSH-2.0-node\r\n")
    assert session.proxy_said() == "failed connecting to node"
    transport = proto.events[0][1]
    transport.write(b"SSH-2.0-client\r\n")  # type: ignore[attr-defined]
    assert chan.written == [b"SSH-2.0-client\r\n"]
    # The proxy connection's socket is not the node connection's business.
    assert transport.get_extra_info("socket") is None  # type: ignore[attr-defined]
    assert transport.get_extra_info("peername", "none") == "none"  # type: ignore[attr-defined]


def test_proxy_stderr_is_bounded() -> None:
    session = _TunnelSession(FakeProtocol())
    for _ in range(100):
        session.data_received(b"x" * 1000, asyncssh.EXTENDED_DATA_STDERR)
    assert len(session.stderr) == 4096
    assert len(session.proxy_said()) == 300


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("no node named \"x\"\n", 'no node named "x"'),
        ("first\n\nsecond\n", "first; second"),
        ("bell\x07 and \x1b[31mred\n", "bell? and ?[31mred"),
        ("", ""),
    ],
)
def test_proxy_text_becomes_one_printable_line(text: str, line: str) -> None:
    assert _one_line(text) == line


def test_host_key_check_matches_the_alias_only() -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    line = ca.export_public_key("openssh").decode().strip()
    known = asyncssh.import_known_hosts(
        f"@cert-authority 127.0.0.1 {line}\n@cert-authority *.example.test {line}\n"
    )
    # A node reached through the proxy at 127.0.0.1: only its name counts.
    ca_keys = [ca.convert_to_public()]
    assert _host_key_check(known, "node1.example.test")("node1", "127.0.0.1", 3022)[1] == ca_keys
    assert _host_key_check(known, "node1.other.test")("node1", "127.0.0.1", 3022)[1] == []
