"""TLS routing, the pure parts: dial choice, the override variable, failure texts, the
profile and ping fields, the test cluster's ClientHello reader and ALPN routes."""

from __future__ import annotations

import dataclasses
import json
import ssl
from pathlib import Path

import pytest

from tests.cluster._alpn import ALPN_PROXY_SSH, Hello, Router, parse_client_hello
from tests.unit.test_sshconfig import BASE
from tsh._core.profile import Profile
from tsh._exceptions import ProfileError, UsageError
from tsh._openssh.config import render
from tsh._openssh.hop import proxy_hop_argv
from tsh._proxy.dial import Dial, conn_upgrade_override, dial_for, openssl_words, tls_route
from tsh._proxy.retry import failure_message, is_drop, tls_failure
from tsh._store.layout import ProfilePaths
from tsh._web.wire import parse_ping

PATHS = ProfilePaths(Path("/home/alice/.tsh"), "proxy.example.com", "alice")
CA = "/home/alice/.tsh/keys/proxy.example.com/cas/example.test.pem"


def _profile(**changes: object) -> Profile:
    base = Profile(web_proxy_addr="proxy.example.com:443", ssh_proxy_addr="proxy.example.com:443",
                   user="alice", cluster="example.test", root_cluster="example.test",
                   tls_routing_enabled=True)  # fmt: skip
    return base._replace(**changes)


# --------------------------------------------------------------------------- the override
@pytest.mark.parametrize(
    ("value", "addr", "expected"),
    [
        ("", "p:443", None),
        ("true", "p:443", True),
        ("0", "p:443", False),
        ("yes", "p:443", True),
        ("p:443=yes,other:443=no", "p:443", True),
        ("p:443=yes,other:443=no", "other:443", False),
        ("p:443=yes", "q:443", None),
        ("0;p:443=1", "p:443", True),  # a per-address entry beats the bare value
        ("0;p:443=1", "q:443", False),
        ("maybe", "p:443", None),
    ],
)
def test_conn_upgrade_override(value: str, addr: str, expected: bool | None) -> None:
    assert conn_upgrade_override(value, addr) is expected


def test_tls_route_follows_profile_then_environment() -> None:
    assert tls_route(_profile(tls_routing_enabled=False), {}) is None
    assert tls_route(_profile(), {}) == "tls"
    upgraded = _profile(tls_routing_conn_upgrade_required=True)
    assert tls_route(upgraded, {}) == "websocket"
    assert tls_route(upgraded, {"TELEPORT_TLS_ROUTING_CONN_UPGRADE_MODE": "legacy"}) == "legacy"
    assert tls_route(upgraded, {"TELEPORT_TLS_ROUTING_CONN_UPGRADE": "proxy.example.com:443=no"}) == "tls"
    assert tls_route(_profile(), {"TELEPORT_TLS_ROUTING_CONN_UPGRADE": "true"}) == "websocket"


# --------------------------------------------------------------------------- the dial
def test_dial_under_tls_routing_is_tshs_tunnel_to_the_web_port(tmp_path: Path) -> None:
    (tmp_path / "openssl").write_text("")  # even with openssl at hand: bigger TLS records
    (tmp_path / "openssl").chmod(0o755)
    dial = dial_for(_profile(), PATHS, {"PATH": str(tmp_path)})
    assert (dial.mode, dial.host, dial.port) == ("tls", "proxy.example.com", 443)
    opt, command = dial.options
    assert opt == "-o" and command.startswith("ProxyCommand=")
    words = [w.strip('"') for w in command.partition("=")[2].split(" ")]
    assert words[1:] == ["-m", "tsh._proxy.tunnel", "proxy.example.com:443", CA]  # the host CA


def test_openssl_hop_checks_the_host_ca_with_the_alpn() -> None:
    words = openssl_words("proxy.example.com", 443, CA)  # the all-OpenSSH form's hop
    assert words[:3] == ["openssl", "s_client", "-quiet"]
    assert words[words.index("-alpn") + 1] == ALPN_PROXY_SSH
    assert words[words.index("-servername") + 1] == "proxy.example.com"
    assert words[words.index("-CAfile") + 1] == CA  # the host CA, not the web roots


def test_dial_behind_an_l7_load_balancer_upgrades() -> None:
    dial = dial_for(_profile(tls_routing_conn_upgrade_required=True), PATHS, {})
    assert dial.mode == "upgrade"
    assert '"tsh._proxy.tunnel" "--upgrade=websocket" "proxy.example.com:443"' in dial.options[1]


def test_openssl_for_an_ip_checks_the_ip_and_sends_no_sni() -> None:
    words = openssl_words("127.0.0.1", 3080, CA)
    assert words[words.index("-verify_ip") + 1] == "127.0.0.1"
    assert "-servername" not in words and "-noservername" in words
    assert words[-1] == "127.0.0.1:3080"
    assert openssl_words("::1", 443, CA)[-1] == "[::1]:443"


def test_unquotable_ca_path_is_refused() -> None:
    bad = ProfilePaths(Path("/home/a!ice"), "proxy.example.com", "alice")
    with pytest.raises(UsageError):
        dial_for(_profile(), bad, {"PATH": ""})


def test_hop_keeps_host_key_alias_and_subsystem_under_tls_routing() -> None:
    dial = Dial("tls", "proxy.example.com", 443, ("-o", "ProxyCommand=x"))
    argv = proxy_hop_argv(_profile(), PATHS, "node1", "example.test", dial=dial)
    assert "HostKeyAlias=proxy.example.com" in argv
    assert argv[-7:-1] == ["-p", "443", "-l", "%r", "-s", "proxy.example.com"]
    assert argv[-1] == "proxy:node1:%p@example.test"
    assert argv[argv.index("ProxyCommand=x") - 1] == "-o"


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize(
    ("stderr", "needle"),
    [
        ("tsh-tunnel: the proxy p:443 is not trusted: its TLS certificate is not signed by the "
         f"cluster's host CA in {CA} (unable to get local issuer certificate); run tsh login again\n"
         "Connection closed by UNKNOWN port 65535\n", f"not signed by the cluster's host CA in {CA}"),
        ("tsh-tunnel: the connection upgrade at p:443 was refused (HTTP 400): ...\n"
         "Connection closed by UNKNOWN port 65535\n", "the connection upgrade at p:443 was refused"),
    ],
)  # fmt: skip
def test_tls_failures_are_one_line_and_never_retried(stderr: str, needle: str) -> None:
    assert not is_drop(stderr)
    message = failure_message(stderr, "p:443", "root", "/kh")
    assert needle in message and "\n" not in message
    assert tls_failure(stderr) == message


def test_plain_drops_stay_drops() -> None:
    assert is_drop("kex_exchange_identification: Connection closed by remote host\n")
    assert is_drop("client_loop: send disconnect: Broken pipe\n")
    assert tls_failure("Permission denied (publickey).\n") is None


# --------------------------------------------------------------------------- profile, ping
def test_profile_round_trips_the_tls_routing_fields() -> None:
    p = _profile(tls_routing_conn_upgrade_required=True)
    data = json.loads(p.to_json())
    assert data["tls_routing_enabled"] is True and data["tls_routing_conn_upgrade_required"] is True
    assert Profile.from_json(p.to_json()) == p
    old = {k: v for k, v in data.items() if not k.startswith("tls_routing")}
    assert Profile.from_json(json.dumps(old)).tls_routing_enabled is False


def test_profile_refuses_a_non_boolean_tls_routing() -> None:
    data = json.loads(_profile().to_json())
    data["tls_routing_enabled"] = "yes"
    with pytest.raises(ProfileError, match="tls_routing_enabled"):
        Profile.from_json(json.dumps(data))


def test_ping_under_tls_routing_puts_ssh_on_the_web_address() -> None:
    answer = {
        "auth": {"type": "local"},
        "proxy": {"tls_routing_enabled": True,
                  "ssh": {"listen_addr": "0.0.0.0:3023", "ssh_public_addr": "ssh.example.com:3023",
                          "public_addr": "proxy.example.com:443"}},
        "server_version": "17.0.0", "cluster_name": "example.test",
    }  # fmt: skip
    ping = parse_ping(answer, "proxy.example.com:443")
    assert ping.tls_routing_enabled is True
    assert ping.ssh_proxy_addr == ping.web_proxy_addr == "proxy.example.com:443"


# --------------------------------------------------------------------------- tsh config
def test_openssh_form_behind_an_l7_load_balancer_is_refused() -> None:
    params = dataclasses.replace(BASE, proxy_command="openssh", tls_ca_file=CA, conn_upgrade=True)
    with pytest.raises(UsageError, match="load balancer.*--proxy-command=tsh"):
        render(params)


def test_tsh_form_is_the_same_under_tls_routing() -> None:
    # `tsh proxy ssh` reads tls_routing_enabled from the profile: the line names the web port.
    assert render(dataclasses.replace(BASE, tls_ca_file=CA)) == render(BASE)


# --------------------------------------------------------------------------- test cluster
def _client_hello(alpn: list[str], sni: str | None) -> bytes:
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    ("alpn", "sni"),
    [([ALPN_PROXY_SSH], "proxy.example.com"), (["h2", "http/1.1"], "localhost"), ([], None)],
)
def test_cluster_reads_sni_and_alpn_from_a_real_client_hello(alpn: list[str], sni: str | None) -> None:
    hello = _client_hello(alpn, sni)
    assert parse_client_hello(hello) == Hello(sni or "", tuple(alpn))
    assert parse_client_hello(hello[:20]) is None  # more bytes needed
    with pytest.raises(ValueError):
        parse_client_hello(b"SSH-2.0-OpenSSH_9.2\r\n")


def test_cluster_routes_in_the_clients_order(tmp_path: Path) -> None:
    router = Router(lambda: "ssh", lambda: "web", (tmp_path, tmp_path), (tmp_path, tmp_path))  # type: ignore[arg-type,return-value]
    router._ctx = lambda identity, alpn: (identity, alpn)  # type: ignore[assignment,method-assign,return-value]
    ssh = router.route(Hello("", ("bogus", ALPN_PROXY_SSH, "http/1.1")), upgraded=False)
    assert ssh is not None and ssh[0]() == "ssh" and ssh[1] == ("host", ALPN_PROXY_SSH)  # type: ignore[comparison-overlap]
    web = router.route(Hello("", ("http/1.1", ALPN_PROXY_SSH)), upgraded=False)
    assert web is not None and web[0]() == "web" and web[1] == ("web", "http/1.1")  # type: ignore[comparison-overlap]
    assert router.route(Hello("", ()), upgraded=False)[1] == ("web", None)  # type: ignore[index,comparison-overlap]
    assert router.route(Hello("", ()), upgraded=True)[1] == ("host", None)  # type: ignore[index,comparison-overlap]
    assert router.route(Hello("", ("teleport-unknown",)), upgraded=False) is None


def test_openssh_form_refuses_a_ca_path_double_quotes_cannot_hold() -> None:
    with pytest.raises(UsageError):
        render(dataclasses.replace(BASE, proxy_command="openssh", tls_ca_file="/home/a!ice/ca.pem"))


# --------------------------------------------------------------------------- tunnel framing
def test_pingconn_framing_drops_pings_and_waits_for_whole_frames() -> None:
    import socket
    import struct

    from tsh._proxy.tunnel import _PingConn

    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = _PingConn(ours, early=b"\0\0\0\0" + struct.pack(">I", 3) + b"abc")
        assert conn.buffered()
        assert conn.recv() == b"abc"  # the early ping dropped, the frame whole
        assert not conn.buffered()
        theirs.sendall(b"\0\0\0\0" + struct.pack(">I", 5) + b"he")
        assert conn.recv() is None  # a ping and half a frame: nothing yet, and no blocking read
        theirs.sendall(b"llo")
        assert conn.recv() == b"hello"
        conn.send(b"xyz")
        assert theirs.recv(16) == struct.pack(">I", 3) + b"xyz"
        theirs.close()
        assert conn.recv() == b""  # EOF
