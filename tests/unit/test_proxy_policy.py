"""tsh._proxy's pure parts: what is retried (retry), where ssh wants to go (target), the dial."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsh import InvalidNameError, UsageError
from tsh._core.addr import SSH_PROXY_PORT
from tsh._core.profile import Profile
from tsh._proxy.dial import Dial, dial_for, ssh_dial_words
from tsh._proxy.retry import (
    MAX_ATTEMPTS,
    backoff_delays,
    failure_message,
    has_banner,
    is_drop,
    without_mux_fallback,
)
from tsh._proxy.target import Target, parse_target

# --- retry: is_drop -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stderr",
    [
        "",  # sshd over MaxStartups closes before its banner: the hop says nothing
        " \n\n",
        "kex_exchange_identification: Connection closed by remote host\r\n",
        "kex_exchange_identification: read: Connection reset by peer\r\n",
        "Connection closed by 127.0.0.1 port 3023\r\n",
        "ssh: handshake failed: EOF\n",  # a recording proxy's handshake with the node
    ],
)
def test_is_drop_for_a_connection_closed_before_authentication(stderr: str) -> None:
    assert is_drop(stderr)


@pytest.mark.parametrize(
    "stderr",
    [
        "user@proxy: Permission denied (publickey).\r\n",
        "Host key verification failed.\r\n",
        "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n",
        'command-line line 0: unsupported option "/tmp/tsh-x/agent.sock".\n',
        "ssh: Could not resolve hostname proxy.invalid: Name or service not known\r\n",
        "subsystem request failed on channel 0\n",
    ],
)
def test_is_drop_is_false_for_failures_a_retry_cannot_mend(stderr: str) -> None:
    assert not is_drop(stderr)


# --- retry: has_banner ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "spoke"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", True),
        (b"SSH-", True),  # the start of the line is enough: the node spoke
        (b"a pre-banner line\r\nSSH-2.0-x\r\n", True),  # RFC 4253 4.2 allows lines before it
        (b"", False),
        (b"SSH", False),
        (b"ssh-2.0-x\r\n", False),
        (b"xSSH-2.0-x", False),  # not at the start of a line
        (b"Connection closed\r\n", False),
    ],
)
def test_has_banner(data: bytes, spoke: bool) -> None:
    assert has_banner(data) is spoke


# --- retry: failure_message -----------------------------------------------------------------


def _message(stderr: str) -> str:
    return failure_message(stderr, "proxy.example.com:3023", "root", "/h/known_hosts")


def test_failure_message_for_a_refused_certificate() -> None:
    assert _message("root@proxy.example.com: Permission denied (publickey).\r\n") == (
        "the proxy proxy.example.com:3023 refused the certificate for login 'root' "
        "(expired, or not one of your logins?)"
    )


@pytest.mark.parametrize(
    "stderr", ["Host key verification failed.\r\n", "@@@ REMOTE HOST IDENTIFICATION HAS CHANGED!"]
)
def test_failure_message_for_an_untrusted_proxy(stderr: str) -> None:
    assert _message(stderr) == (
        "the proxy proxy.example.com:3023 is not trusted: its host certificate is not signed "
        "by a CA in /h/known_hosts; run tsh login again"
    )


def test_failure_message_otherwise_is_ssh_own_lines_on_one_line() -> None:
    assert _message("\r\nfirst problem\r\n\n  second problem  \n") == "first problem; second problem"
    assert _message("") == "the proxy proxy.example.com:3023 closed the connection"
    assert _message(" \n") == "the proxy proxy.example.com:3023 closed the connection"


# --- retry: backoff_delays ------------------------------------------------------------------


def test_backoff_is_bounded_and_jittered() -> None:
    assert backoff_delays(4, base=0.1, cap=1.0, rand=lambda: 1.0) == [0.1, 0.2, 0.4]
    assert backoff_delays(8, base=0.1, cap=1.0, rand=lambda: 1.0)[-1] == 1.0
    assert backoff_delays(5, rand=lambda: 0.0) == [0.0] * 4
    assert backoff_delays(1) == []


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_backoff_stays_within_its_exponential_bound(r: float) -> None:
    delays = backoff_delays(rand=lambda: r)
    assert len(delays) == MAX_ATTEMPTS - 1  # one sleep before each retry
    for i, delay in enumerate(delays):
        assert 0.0 <= delay <= min(2.0, 0.05 * 2**i)


def test_backoff_default_jitter_is_within_bounds() -> None:
    # Eight attempts in all wait at most a few seconds: OpenSSH's ConnectTimeout is not hit.
    for _ in range(50):
        delays = backoff_delays()
        assert all(0.0 <= d <= min(2.0, 0.05 * 2**i) for i, d in enumerate(delays))
        assert sum(delays) <= 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2.0


# --- target.parse_target --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("root@node1.example.test:3022", Target("root", "node1.example.test", "3022")),
        ("node1:22", Target(None, "node1", "22")),
        ("a@b@node1:22", Target("a@b", "node1", "22")),  # the last @ ends the login
        ("node1:", Target(None, "node1", "")),  # empty port: the proxy's default
        ("root@[::1]:2222", Target("root", "::1", "2222")),
        ("[::1]:22", Target(None, "::1", "22")),
        ("[fe80::1]:", Target(None, "fe80::1", "")),
        ("root@node1:65535", Target("root", "node1", "65535")),
        ("root@node1:0", Target("root", "node1", "0")),  # the registered port (tsh ssh, no --port)
    ],
)
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    "bad",
    ["node1", ":22", "root@:22", "node1:x", "node1:70000", "node1:-1", "node1: 22", "node1:\u00b2",
     "node1:\u0663", "[::1]", "[::1]22", "[]:22", "[::1"],
)  # fmt: skip
def test_parse_target_refuses(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_target(bad)


@pytest.mark.parametrize(
    "bad",
    ["-oProxyCommand=x@h:22", "a b@h:22", "r@h;id:22", "r@*:22", "@h:22", "-l@h:22", "r$(id)@h:22"],
)
def test_parse_target_refuses_unsafe_names(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_target(bad)


# --- dial -----------------------------------------------------------------------------------


def _profile(ssh_proxy_addr: str) -> Profile:
    return Profile(web_proxy_addr="proxy.example.com:3080", ssh_proxy_addr=ssh_proxy_addr,
                   user="alice", cluster="example.test")  # fmt: skip


def test_dial_for_is_tcp_to_the_ssh_proxy_port() -> None:
    assert dial_for(_profile("proxy.example.com:3023")) == Dial("tcp", "proxy.example.com", 3023, ())
    assert dial_for(_profile("proxy.example.com")) == Dial("tcp", "proxy.example.com", SSH_PROXY_PORT, ())
    assert dial_for(_profile("[::1]:4023")) == Dial("tcp", "::1", 4023, ())


@pytest.mark.parametrize("bad", ["-oProxyCommand=x:3023", "pro xy:3023", "p;id:3023"])
def test_dial_for_refuses_an_unsafe_proxy_host(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        dial_for(_profile(bad))


def test_ssh_dial_words() -> None:
    assert ssh_dial_words(Dial("tcp", "proxy.example.com", 3023, ())) == (
        ["-p", "3023"],
        "proxy.example.com",
    )
    # Extra options (a future TLS or WebSocket dial) come before the port.
    assert ssh_dial_words(Dial("tcp", "::1", 22, ("-o", "ProxyCommand=x"))) == (
        ["-o", "ProxyCommand=x", "-p", "22"],
        "::1",
    )


def test_without_mux_fallback_drops_only_openssh_lines_about_a_failed_master() -> None:
    err = (b"mux_client_request_session: read from master failed: Broken pipe\r\n"
           b"Warning: Permanently added 'x' to the list of known hosts.\n"
           b"a line about mux_client_ that is not OpenSSH's\n")  # fmt: skip
    assert without_mux_fallback(err) == (b"Warning: Permanently added 'x' to the list of known hosts.\n"
                                         b"a line about mux_client_ that is not OpenSSH's\n")  # fmt: skip
    assert without_mux_fallback(b"") == b""
