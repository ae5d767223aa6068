"""The test cluster's pure parts: proxy subsystem grammar, routing, durations, state files."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from tests.cluster._duration import format_go_duration, parse_duration
from tests.cluster._state import ClusterState, Node, StateError, hash_password, verify_password
from tests.cluster._subsystem import (
    ProxyRequest,
    SubsystemError,
    go_quote,
    parse_proxy_subsystem,
    proxysites_json,
    route,
)

BAD = "invalid format for proxy request: {q}, expected 'proxy:host:port@cluster'"


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ("proxy:node1:3022", ProxyRequest("node1", "3022", "")),
        ("proxy:node1:3022@root", ProxyRequest("node1", "3022", "root")),
        ("proxy:node1:@root", ProxyRequest("node1", "", "root")),
        ("proxy:node1:", ProxyRequest("node1", "", "")),
        ("proxy:@root", ProxyRequest("", "", "root")),
        ("proxy:[::1]:22", ProxyRequest("::1", "22", "")),
        ("proxy:node1:22@ns@a@b", ProxyRequest("node1", "22", "a@b", "ns")),
    ],
)
def test_parse_proxy_subsystem_accepts(request_: str, expected: ProxyRequest) -> None:
    assert parse_proxy_subsystem(request_) == expected


@pytest.mark.parametrize(
    "request_",
    ["proxy:", "proxy:node1", "proxy:node1@root", "proxy::22", "proxy:a:b:c", "proxysites",
     "prox:node1:22", "proxy:[::1@root", "proxy:node1@ns@root"],
)
def test_parse_proxy_subsystem_rejects_with_teleport_text(request_: str) -> None:
    with pytest.raises(SubsystemError) as exc:
        parse_proxy_subsystem(request_)
    assert str(exc.value) == BAD.format(q=go_quote(request_))


def test_parse_proxy_subsystem_missing_host_and_cluster() -> None:
    with pytest.raises(SubsystemError) as exc:
        parse_proxy_subsystem("proxy:@")
    assert str(exc.value) == (
        'invalid format for proxy request: missing cluster name or target host in "proxy:@"'
    )


def test_go_quote_escapes_like_go() -> None:
    assert go_quote('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01é"'


NODES = {
    "node1": Node("node1", "127.0.0.1", 40001),
    "node2": Node("node2", "127.0.0.1", 40002),
    "std": Node("std", "10.0.0.5", 3022),
}


@pytest.mark.parametrize(
    ("host", "port", "want"),
    [
        ("node1", "40001", "node1"),
        ("node1", "", "node1"),  # empty port: the name decides
        ("node1", "0", "node1"),
        ("127.0.0.1", "40002", "node2"),  # by registered address
        ("10.0.0.5", "", "std"),  # empty port = 3022
    ],
)
def test_route_finds_node(host: str, port: str, want: str) -> None:
    assert route(ProxyRequest(host, port, "example.test"), "example.test", NODES).name == want


@pytest.mark.parametrize(
    ("req", "fragment"),
    [
        (ProxyRequest("node1", "22", ""), 'no node named "node1" with port 22'),
        (ProxyRequest("ghost", "", ""), 'no node named "ghost"'),
        (ProxyRequest("127.0.0.1", "", ""), "no node named"),  # two nodes, neither on 3022
        (ProxyRequest("node1", "40001", "leaf"), 'unknown cluster "leaf"'),
        (ProxyRequest("", "", "example.test"), "not supported"),
    ],
)
def test_route_refuses_clearly(req: ProxyRequest, fragment: str) -> None:
    with pytest.raises(SubsystemError, match=fragment):
        route(req, "example.test", NODES)


def test_proxysites_json_shape() -> None:
    now = dt.datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=dt.timezone.utc)
    assert json.loads(proxysites_json("example.test", now)) == [
        {"name": "example.test", "lastconnected": "2024-05-01T12:30:00.123456Z",
         "status": "online"}
    ]


@pytest.mark.parametrize(
    ("ns", "text"),
    [(12 * 3600 * 10**9, "12h0m0s"), (90 * 10**9, "1m30s"), (5 * 10**9, "5s"), (0, "0s")],
)
def test_format_go_duration(ns: int, text: str) -> None:
    assert format_go_duration(ns) == text


@pytest.mark.parametrize(
    ("text", "secs"), [("30h", 108000), ("1h30m", 5400), ("90s", 90), ("120", 120)]
)
def test_parse_duration(text: str, secs: int) -> None:
    assert parse_duration(text) == secs * 10**9


@pytest.mark.parametrize("text", ["", "0", "-5s", "5x", "h", "1h 2m", "0s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_password_hash_is_salted_and_verifies() -> None:
    # A password no random base64 salt or hash will contain by chance (a two-letter
    # one did, now and then).
    pw = "correct horse battery staple"
    a, b = hash_password(pw), hash_password(pw)
    assert a != b and pw not in a
    assert verify_password(pw, a) and not verify_password(pw.upper(), a)
    assert not verify_password(pw, "garbage")


def test_state_round_trip_and_reload(tmp_path) -> None:
    state = ClusterState.init(tmp_path / "d", "c.test")
    assert state.users() == {}
    other = ClusterState.open(tmp_path / "d")  # e.g. the admin CLI in another process
    # A password that a random base64 salt or digest cannot contain by chance.
    other.add_user("alice", "pw not-base64!", ["root", "bob"], max_ttl_ns=3600 * 10**9, otp=True)
    other.add_node("n1", "127.0.0.1:2222")
    user = state.users()["alice"]  # the first instance sees the change without restart
    assert user.logins == ("root", "bob") and user.max_ttl_ns == 3600 * 10**9
    assert user.otp_secret and len(user.otp_secret) >= 16
    assert state.check_password("alice", "pw not-base64!") == user
    assert state.check_password("alice", "nope") is None
    assert state.check_password("nobody", "pw") is None
    assert state.nodes()["n1"].addr == "127.0.0.1:2222"
    assert os.stat(tmp_path / "d" / "users.json").st_mode & 0o077 == 0
    assert "not-base64!" not in (tmp_path / "d" / "users.json").read_text()


def test_state_refuses_bad_input(tmp_path) -> None:
    state = ClusterState.init(tmp_path / "d", "c.test")
    with pytest.raises(StateError, match="holds cluster"):
        ClusterState.init(tmp_path / "d", "other.test")
    with pytest.raises(StateError, match="no cluster"):
        ClusterState.open(tmp_path / "empty")
    for args in [("bad name", "pw", ["root"]), ("u", "pw", []), ("u", "", ["root"]),
                 ("u", "pw", ["-rf"])]:
        with pytest.raises(StateError):
            state.add_user(*args)
    for addr in ["nohost", "h:0", "h:99999", ":22"]:
        with pytest.raises(StateError):
            state.add_node("n", addr)
    assert state.users() == {} and state.nodes() == {}
