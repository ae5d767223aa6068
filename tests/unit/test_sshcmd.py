"""tsh._openssh.argv: the ssh and scp command lines of `tsh ssh` and `tsh scp`.

`ssh -G` (OpenSSH's own option parser) is the oracle for what ssh will do
with the command line; it makes no connection.
"""

from __future__ import annotations

import shlex

import pytest

from tsh import InvalidNameError, Profile, ProfileStore, UsageError
from tsh._openssh.argv import (
    SSHRequest,
    parse_destination,
    parse_scp_arg,
    proxy_command,
    scp_argv,
    ssh_argv,
)

PROFILE = Profile(
    web_proxy_addr="proxy.example.com:3080",
    ssh_proxy_addr="proxy.example.com:3023",
    user="joe",
    cluster="example.com",
    root_cluster="example.com",
    clusters=("example.com",),
    valid_before=2_000_000_000,
)


@pytest.fixture
def paths(tmp_path):
    return ProfileStore(tmp_path / "tsh home").paths("proxy.example.com", "joe")


def test_ssh_argv_resolves_as_intended(paths, ssh_G):
    argv = ssh_argv(PROFILE, paths, SSHRequest(port=22), "root@node1", ["echo", "hi"])
    assert argv[-3:] == ["node1", "echo", "hi"] and argv[-4] == "--"
    cfg = ssh_G(*argv[1:-2])
    assert cfg["user"] == "root"
    assert cfg["port"] == "22"
    assert cfg["hostkeyalias"] == "node1.example.com"
    assert cfg["stricthostkeychecking"] == "true"
    assert cfg["userknownhostsfile"] == str(paths.known_hosts)
    assert cfg["certificatefile"] == str(paths.ssh_cert("example.com"))
    assert cfg["identityfile"] == str(paths.private_key)
    assert cfg["forwardagent"] == "no"
    proxy = shlex.split(cfg["proxycommand"])
    # ssh -G shows ProxyCommand before token expansion: %r and %p are filled in at connect.
    assert proxy[0] == "ssh"
    assert proxy[-5:] == ["-l", "%r", "-s", "proxy.example.com", "proxy:node1:%p@example.com"]
    assert "ForwardAgent=yes" in proxy and "HostKeyAlias=proxy.example.com" in proxy


def test_fqdn_destination_is_not_suffixed_twice(paths, ssh_G):
    argv = ssh_argv(PROFILE, paths, SSHRequest(), "node1.example.com")
    cfg = ssh_G(*argv[1:])
    assert cfg["hostkeyalias"] == "node1.example.com"
    # No port given: no -p, and the proxy is asked for port 0 (the node's registered
    # one, whatever it is), as real tsh asks; %p could not carry it (ssh refuses -p 0).
    assert "-p" not in argv
    assert shlex.split(cfg["proxycommand"])[-1] == "proxy:node1:0@example.com"


def test_flags_pass_through_and_user_options_win(paths, ssh_G):
    request = SSHRequest(
        login="admin",
        forward_agent=True,
        local_forwards=("8080:localhost:80",),
        no_command=True,
        tty=False,
        options=("StrictHostKeyChecking=no", "ServerAliveInterval=7"),
    )
    argv = ssh_argv(PROFILE, paths, request, "node1")
    for flag in ("-A", "-N", "-T"):
        assert flag in argv
    assert argv[argv.index("-L") + 1] == "8080:localhost:80"
    cfg = ssh_G(*argv[1:])
    assert cfg["user"] == "admin"
    assert cfg["forwardagent"] == "yes"
    assert cfg["serveraliveinterval"] == "7"
    assert cfg["stricthostkeychecking"] == "false"  # the user's -o came first


def test_agent_only_profile_uses_the_public_key(paths, ssh_G):
    profile = PROFILE._replace(key_storage="agent")
    cfg = ssh_G(*ssh_argv(profile, paths, SSHRequest(), "node1")[1:])
    assert cfg["identityfile"] == str(paths.public_key)
    assert cfg["identitiesonly"] == "yes"


def test_proxy_command_quotes_paths_with_spaces(paths):
    command = proxy_command(PROFILE, paths, "node1", "example.com")
    words = shlex.split(command.replace("%r", "root"))
    assert f'UserKnownHostsFile="{paths.known_hosts}"' in words
    assert " " in str(paths.known_hosts)


def test_leaf_cluster(paths, ssh_G):
    argv = ssh_argv(PROFILE, paths, SSHRequest(cluster="leaf"), "node2")
    cfg = ssh_G(*argv[1:])
    assert cfg["hostkeyalias"] == "node2.leaf"
    assert shlex.split(cfg["proxycommand"])[-1] == "proxy:node2:0@leaf"


@pytest.mark.parametrize(
    "destination, login",
    [
        ("-oProxyCommand=x", None),
        ("root@-x", None),
        ("-x@node", None),
        ("root@no de", None),
        ("root@node\n", None),
        ("node", "bad login"),
        ("root@", None),
        ("ro'ot@node", None),
        ("root@node;id", None),
        ("root@$(id)", None),
    ],
)
def test_bad_destinations_are_refused(destination, login):
    with pytest.raises(UsageError):
        parse_destination(destination, login)


def test_bad_cluster_is_refused(paths):
    with pytest.raises(InvalidNameError):
        ssh_argv(PROFILE, paths, SSHRequest(cluster="*"), "node1")


@pytest.mark.parametrize("cluster", ["x;touch /tmp/pwned", "*", "a b"])
def test_bad_cluster_is_refused_via_tsh(paths, cluster):
    # The tsh proxy ssh ProxyCommand puts --cluster into a shell line.
    with pytest.raises(InvalidNameError):
        ssh_argv(PROFILE, paths, SSHRequest(cluster=cluster), "node1", via_tsh=("/usr/bin/tsh",))
    with pytest.raises(InvalidNameError):
        scp_argv(PROFILE, paths, ["node1:/x", "."], cluster=cluster, via_tsh=("/usr/bin/tsh",))


@pytest.mark.parametrize(
    "arg, login, host, path",
    [
        ("root@node1:/tmp/x", "root", "node1", "/tmp/x"),
        ("node1:", None, "node1", ""),
        ("./a:b", None, None, "./a:b"),
        ("/abs/a:b", None, None, "/abs/a:b"),
        ("local", None, None, "local"),
        ("[::1]:/x", None, "::1", "/x"),
    ],
)
def test_parse_scp_arg(arg, login, host, path):
    remote = parse_scp_arg(arg)
    assert (remote.login, remote.host, remote.path) == (login, host, path)


def test_scp_argv(paths):
    argv = scp_argv(PROFILE, paths, ["a", "b", "root@node1:/tmp/"], port=22, recursive=True)
    assert argv[:2] == ["scp", "-r"]
    assert argv[-6:] == ["-P", "22", "--", "a", "b", "root@node1:/tmp/"]
    assert "HostKeyAlias=node1.example.com" in argv


@pytest.mark.parametrize(
    "args, message",
    [
        (["a"], "at least one SOURCE"),
        (["a", "b"], "no [LOGIN@]HOST:PATH"),
        (["n1:/a", "n2:/b"], "one node at a time"),
        (["a", "-oProxyCommand=x:/b"], "must not start with '-'"),
    ],
)
def test_scp_refuses(paths, args, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        scp_argv(PROFILE, paths, args)


def test_via_tsh_uses_tsh_proxy_ssh(paths, ssh_G):
    argv = ssh_argv(PROFILE, paths, SSHRequest(), "node1", via_tsh=("/opt/tsh dir/tsh",))
    cfg = ssh_G(*argv[1:])
    assert shlex.split(cfg["proxycommand"]) == [
        "/opt/tsh dir/tsh", "proxy", "ssh", "--cluster=example.com",
        "--proxy=proxy.example.com:3080", "%r@%h:0",
    ]  # fmt: skip
    assert cfg["hostkeyalias"] == "node1.example.com"
    argv = ssh_argv(PROFILE, paths, SSHRequest(port=22), "node1", via_tsh=("/opt/tsh dir/tsh",))
    assert shlex.split(ssh_G(*argv[1:])["proxycommand"])[-1] == "%r@%h:%p"


def test_via_tsh_refuses_an_unsafe_executable(paths):
    with pytest.raises(InvalidNameError):
        ssh_argv(PROFILE, paths, SSHRequest(), "node1", via_tsh=('/tmp/"$(id)"/tsh',))


def test_hop_forwards_a_given_agent_socket_quoted_and_checked(paths):
    from tsh._openssh.hop import proxy_hop_argv

    argv = proxy_hop_argv(PROFILE, paths, "node1", "example.test", agent_sock="/tmp/a b/fwd.sock")
    assert argv[argv.index('ForwardAgent="/tmp/a b/fwd.sock"') - 1] == "-o"
    assert "ForwardAgent=yes" not in argv
    assert "ForwardAgent=yes" in proxy_hop_argv(PROFILE, paths, "node1", "example.test")
    for unsafe in ("/tmp/%d/fwd.sock", "/tmp/${HOME}/fwd.sock", "relative.sock"):
        with pytest.raises(InvalidNameError):
            proxy_hop_argv(PROFILE, paths, "node1", "example.test", agent_sock=unsafe)
