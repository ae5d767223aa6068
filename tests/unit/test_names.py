"""tsh._core.names: the allowlist for names written into OpenSSH files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsh import InvalidNameError
from tsh._core.names import (
    validate_cluster_name,
    validate_host,
    validate_login,
    validate_path,
    validate_port,
)

# Each of these could add a directive, a pattern or a shell word if written raw.
HOSTILE = [
    "",
    "a b",
    "a\tb",
    "a\nHost *",
    "a\rb",
    "a,b",
    "*",
    "a*",
    "a?",
    "!a",
    "a%h",
    'a"b',
    "a'b",
    "a`id`",
    "a$(id)",
    "a;b",
    "a\\b",
    "-oProxyCommand=x",
    ".hidden",
    "a\x00b",
    "a\x1bb",
    "ü.example",
    "a/b",
    "a@b:c",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_cluster_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_cluster_name(name)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_hosts_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_host(name)


@pytest.mark.parametrize("name", [n for n in HOSTILE if n not in ("a@b:c",)])
def test_hostile_logins_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_login(name)


@pytest.mark.parametrize(
    "name", ["example.test", "teleport.example.com", "leaf-1", "a_b", "127.0.0.1", "x"]
)
def test_ordinary_names_are_accepted(name: str) -> None:
    assert validate_cluster_name(name) == name
    assert validate_host(name) == name


def test_trailing_dot_and_length() -> None:
    with pytest.raises(InvalidNameError):
        validate_cluster_name("example.test.")
    with pytest.raises(InvalidNameError, match="longer than"):
        validate_cluster_name("a" * 254)
    assert validate_cluster_name("a" * 253)


def test_ipv6_hosts_are_normalized() -> None:
    assert validate_host("::1") == "::1"
    assert validate_host("[::1]") == "::1"
    assert validate_host("[0:0::1]") == "::1"
    with pytest.raises(InvalidNameError):
        validate_host("[::1")
    with pytest.raises(InvalidNameError):
        validate_host("a:b")


def test_logins() -> None:
    for login in ["root", "alice", "svc-deploy", "a.b", "user@corp.example", "_x"]:
        assert validate_login(login) == login
    with pytest.raises(InvalidNameError, match="invalid login"):
        validate_login("-l")


def test_error_message_shows_control_characters() -> None:
    with pytest.raises(InvalidNameError) as e:
        validate_cluster_name("evil\nHost *")
    assert "\\n" in str(e.value) and "\n" not in str(e.value)


def test_paths() -> None:
    assert validate_path("/home/a b/.tsh/known_hosts") == "/home/a b/.tsh/known_hosts"
    for bad in ["relative/x", "/a\"b", "/a'b", "/a%d", "/a${HOME}", "/a`b`", "/a\\b", "/a\nb"]:
        with pytest.raises(InvalidNameError):
            validate_path(bad)


def test_ports() -> None:
    assert validate_port(3022) == 3022
    for bad in [0, 65536, -1, True]:
        with pytest.raises(InvalidNameError):
            validate_port(bad)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_accepted_names_contain_nothing_ssh_config_interprets(s: str) -> None:
    for check in (validate_cluster_name, validate_host, validate_login):
        try:
            out = check(s)
        except InvalidNameError:
            continue
        assert out
        assert not set(out) & set(" \t\r\n,*?!%\"'\\$`;#=/")
        assert not out.startswith(("-", "."))


@pytest.mark.parametrize(
    "addr",
    ["fe80::1%eth0", "[fe80::1%eth0]", "fe80::1%n'$(touch${IFS}x)'", "fe80::1%n\nMatch exec x",
     "fe80::1%x,*", "::1 ", "::g"],
)
def test_ipv6_scope_ids_and_junk_are_refused(addr: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_host(addr)


def test_validators_return_their_types_and_pass_them_through() -> None:
    from tsh._core.names import ClusterName, HostName, Login, SafePath, UserName, validate_user_name

    host = validate_host("[::1]")
    assert type(host) is HostName and host == "::1"
    assert validate_host(host) is host  # parsed once: a typed value is not checked again
    assert type(validate_cluster_name("c")) is ClusterName
    assert type(validate_login("root")) is Login
    assert type(validate_path("/a b")) is SafePath
    assert type(validate_user_name("joe@example.com")) is UserName


@pytest.mark.parametrize("word", ["", "a b", "/path with space/tsh", "%r@%h:%p", '-o "x"'])
def test_shell_word_single_quotes(word: str) -> None:
    import shlex

    from tsh._core.names import shell_word

    quoted = shell_word(word)
    assert shlex.split(quoted) == [word]


@pytest.mark.parametrize("word", ["a'b", "a\\b", "a!b", "a\nb", "a\x00b"])
def test_shell_word_refuses_what_some_shell_reads_inside_quotes(word: str) -> None:
    from tsh._core.names import shell_word

    with pytest.raises(InvalidNameError):
        shell_word(word)
