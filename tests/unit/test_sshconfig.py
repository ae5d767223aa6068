"""tsh._openssh.config: golden renderings, refused names, and the --update merge."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tsh import InvalidNameError, UsageError
from tsh._openssh.config import (
    SSHConfigParams,
    merge,
    parse_openssh_version,
    render,
    tsh_proxy_command,
)

GOLDEN = Path(__file__).parent / "golden" / "sshconfig"

BASE = SSHConfigParams(
    proxy_host="proxy.example.com",
    proxy_port=443,
    ssh_proxy_host="proxy.example.com",
    ssh_proxy_port=3023,
    clusters=("example.com",),
    known_hosts="/home/alice/.tsh/known_hosts",
    identity_file="/home/alice/.tsh/keys/proxy.example.com/bob",
    certificate_file="/home/alice/.tsh/keys/proxy.example.com/bob-ssh/example.com-cert.pub",
    executable=("/usr/local/bin/tsh",),
    ssh_version=(9, 2),
)

#: What `tsh config` passes once the login wrote a reuse tag (tsh._openssh.reuse).
REUSE_TAG = "/home/alice/.tsh/keys/proxy.example.com/bob-ssh/reuse"

CASES = {
    "single_cluster": BASE,
    "single_cluster_with_login_and_port": dataclasses.replace(BASE, login="testuser", port=3232),
    "multiple_clusters": dataclasses.replace(BASE, clusters=("root", "leaf")),
    "multiple_clusters_with_login": dataclasses.replace(
        BASE, clusters=("root", "leaf"), login="testuser"
    ),
    "legacy_openssh": dataclasses.replace(BASE, ssh_version=(7, 4)),
    "unknown_openssh": dataclasses.replace(BASE, ssh_version=None),
    "python_module": dataclasses.replace(
        BASE, executable=("/opt/venv with space/bin/python3", "-m", "tsh")
    ),
    "openssh_proxy_command": dataclasses.replace(
        BASE, clusters=("root", "leaf"), proxy_command="openssh", login="root", reuse_tag=REUSE_TAG
    ),
    "openssh_no_reuse": dataclasses.replace(
        BASE, proxy_command="openssh", reuse=False, reuse_tag=REUSE_TAG
    ),
    "tsh_no_reuse": dataclasses.replace(BASE, reuse=False),
    "agent_only": dataclasses.replace(
        BASE,
        identity_file="/home/alice/.tsh/keys/proxy.example.com/bob.pub",
        identities_only=True,
    ),
    "agent_only_openssh": dataclasses.replace(
        BASE,
        identity_file="/home/alice/.tsh/keys/proxy.example.com/bob.pub",
        identities_only=True,
        proxy_command="openssh",
        reuse_tag=REUSE_TAG,
    ),
    "ipv6_proxy": dataclasses.replace(BASE, proxy_host="::1", ssh_proxy_host="::1"),
    # TLS routing: the hop reaches the web port (443) through openssl s_client.
    "openssh_tls_routing": dataclasses.replace(
        BASE, proxy_command="openssh", ssh_proxy_port=443,
        tls_ca_file="/home/alice/.tsh/keys/proxy.example.com/cas/example.com.pem",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    got = render(CASES[case])
    path = GOLDEN / f"{case}.golden"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text()


def test_matches_real_tsh_shape() -> None:
    """Teleport's own golden (modern, username, custom port), minus HostKeyAlgorithms.

    One deliberate difference: every word of ProxyCommand is single-quoted
    for the shell that runs it (Teleport writes ``"/tmp/tsh" ... %r@%h:%p``).
    """
    p = dataclasses.replace(
        BASE,
        clusters=("example.com",),
        identity_file="/home/alice/.tsh/keys/example.com/bob",
        certificate_file="/home/alice/.tsh/keys/example.com/bob-ssh/example.com-cert.pub",
        executable=("/tmp/tsh",),
        login="testuser",
        port=3232,
    )
    assert render(p) == (
        "# Begin generated Teleport configuration for proxy.example.com by tsh\n\n"
        "# Common flags for all example.com hosts\n"
        "Host *.example.com proxy.example.com\n"
        '    UserKnownHostsFile "/home/alice/.tsh/known_hosts"\n'
        '    IdentityFile "/home/alice/.tsh/keys/example.com/bob"\n'
        '    CertificateFile "/home/alice/.tsh/keys/example.com/bob-ssh/example.com-cert.pub"\n'
        '    User "testuser"\n\n'
        "# Flags for all example.com hosts except the proxy\n"
        "Host *.example.com !proxy.example.com\n"
        "    Port 3232\n"
        "    ProxyCommand '/tmp/tsh' proxy ssh --cluster='example.com' "
        "--proxy='proxy.example.com:443' '%r@%h:%p'\n"
        '    User "testuser"\n\n'
        "# End generated Teleport configuration\n"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"clusters": ("root", "evil\nHost *")},
        {"clusters": ("*",)},
        {"proxy_host": "proxy example"},
        {"proxy_host": "!proxy"},
        {"ssh_proxy_host": "a;b"},
        {"login": 'x" ProxyCommand "y'},
        {"login": "a%h"},
        {"known_hosts": '/a"b'},
        {"identity_file": "relative"},
        {"certificate_file": "/a%d"},
        {"executable": ("/bin/ts$h",)},
        {"port": 0},
    ],
)
def test_unsafe_values_are_refused(change: dict) -> None:
    with pytest.raises(InvalidNameError):
        render(dataclasses.replace(BASE, **change))


def test_other_usage_errors() -> None:
    with pytest.raises(UsageError, match="no cluster"):
        render(dataclasses.replace(BASE, clusters=()))
    with pytest.raises(UsageError, match="proxy command form") as e:
        render(dataclasses.replace(BASE, proxy_command="nc"))
    assert "--" not in str(e.value)  # the library names no command-line flag
    with pytest.raises(UsageError, match="executable"):
        render(dataclasses.replace(BASE, executable=()))
    with pytest.raises(UsageError):
        render(dataclasses.replace(BASE, executable=("/usr/bin/python3", "-c", "x;y")))


def test_zipapp_proxy_command_quotes_both_paths() -> None:
    exe = ("/usr/bin/python3", "/opt/my tools/tsh.pyz")
    assert tsh_proxy_command(exe, "example.com", "proxy.example.com", 443) == (
        "'/usr/bin/python3' '/opt/my tools/tsh.pyz' proxy ssh --cluster='example.com' "
        "--proxy='proxy.example.com:443' '%r@%h:%p'"
    )
    with pytest.raises(InvalidNameError, match="contains"):
        render(dataclasses.replace(BASE, executable=("/usr/bin/python3", "/tmp/$x.pyz")))


def test_parse_openssh_version() -> None:
    assert parse_openssh_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.11") == (9, 2)
    assert parse_openssh_version("OpenSSH_7.4p1, OpenSSL 1.0.2k-fips") == (7, 4)
    assert parse_openssh_version("OpenSSH_for_Windows_8.1p1, LibreSSL 3.0.2") == (8, 1)
    assert parse_openssh_version("Sun_SSH_1.1") is None


BLOCK = render(BASE)
OTHER = render(dataclasses.replace(BASE, proxy_host="other.example.com", ssh_proxy_host="o"))


def test_merge_into_empty_file() -> None:
    assert merge("", BLOCK, "proxy.example.com") == BLOCK


def test_merge_appends_once_and_keeps_the_rest() -> None:
    before = "Host github.com\n    User git\n"
    once = merge(before, BLOCK, "proxy.example.com")
    assert once == before + "\n" + BLOCK
    assert merge(once, BLOCK, "proxy.example.com") == once


def test_merge_file_without_final_newline() -> None:
    once = merge("Host a\n  Port 1", BLOCK, "proxy.example.com")
    assert once == "Host a\n  Port 1\n\n" + BLOCK


def test_merge_replaces_in_place() -> None:
    head = "# mine\r\nHost a\n    Port 1\n\n"
    tail = "\nHost *\n    ServerAliveInterval 30\n"
    old = head + BLOCK.replace("Port 3022", "Port 9") + tail
    new = merge(old, BLOCK, "proxy.example.com")
    assert new == head + BLOCK + tail
    assert merge(new, BLOCK, "proxy.example.com") == new


def test_merge_leaves_other_proxies_alone() -> None:
    text = OTHER + "\n" + BLOCK.replace("Port 3022", "Port 9")
    new = merge(text, BLOCK, "proxy.example.com")
    assert new == OTHER + "\n" + BLOCK
    assert merge(new, render(dataclasses.replace(BASE, proxy_host="third")), "third").startswith(
        new
    )


def test_merge_refuses_unterminated_block() -> None:
    broken = BLOCK.replace("# End generated Teleport configuration\n", "")
    with pytest.raises(UsageError, match="no '# End"):
        merge("x\n" + broken, BLOCK, "proxy.example.com")


def test_host_patterns_are_lower_case() -> None:
    """ssh lower-cases the host name but matches patterns as written."""
    text = render(dataclasses.replace(BASE, clusters=("Root.Example",), proxy_host="Proxy.X"))
    assert "Host *.root.example proxy.x\n" in text
    assert "Host *.root.example !proxy.x\n" in text
    assert "--cluster='Root.Example' --proxy='Proxy.X:443'" in text


def test_update_creates_a_missing_directory_private(tmp_path: Path) -> None:
    from tsh._openssh.config_file import update_ssh_config

    target = tmp_path / "new" / "config"
    assert update_ssh_config(target, BLOCK, "proxy.example.com") == (True, None)
    assert target.read_text() == BLOCK
    assert os.stat(target.parent).st_mode & 0o777 == 0o700
    assert os.stat(target).st_mode & 0o777 == 0o600


def test_update_leaves_an_existing_directory_mode_alone(tmp_path: Path) -> None:
    from tsh._openssh.config_file import update_ssh_config

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    update_ssh_config(shared / "config", BLOCK, "proxy.example.com")
    assert os.stat(shared).st_mode & 0o7777 == 0o1777


def test_update_keeps_mode_and_a_backup(tmp_path: Path) -> None:
    from tsh._openssh.config_file import update_ssh_config

    target = tmp_path / "config"
    target.write_text("Host a\n")
    os.chmod(target, 0o644)
    changed, backup = update_ssh_config(target, BLOCK, "proxy.example.com")
    assert changed and backup is not None and backup.read_text() == "Host a\n"
    assert target.read_text() == "Host a\n\n" + BLOCK
    assert os.stat(target).st_mode & 0o777 == 0o644
    assert update_ssh_config(target, BLOCK, "proxy.example.com") == (False, None)


@pytest.mark.parametrize(
    "host, subsystem",
    [("node1.root", "proxy:node1:22@root"), ("node1.root.proxy.example.com", "proxy:node1:22@root"),
     ("::1.root", "proxy:[::1]:22@root")],
)
def test_openssh_form_script_builds_the_subsystem(tmp_path: Path, host: str, subsystem: str) -> None:
    """The openssh form's ProxyCommand, run by sh as ssh runs it, with a fake ssh logging argv."""
    import re
    import subprocess

    text = render(dataclasses.replace(BASE, clusters=("root",), proxy_command="openssh"))
    command = next(ln for ln in text.splitlines() if "ProxyCommand" in ln).split("ProxyCommand ", 1)[1]
    tokens = {"r": "alice", "h": host, "p": "22", "%": "%"}
    line = re.sub(r"%(.)", lambda m: tokens[m.group(1)], command)
    (tmp_path / "ssh").write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$LOG"\n')
    (tmp_path / "ssh").chmod(0o755)
    log = tmp_path / "argv"
    subprocess.run(["/bin/sh", "-c", f"exec {line}"], check=True, timeout=10,
                   env={"PATH": f"{tmp_path}:/usr/bin:/bin", "LOG": str(log)})
    argv = log.read_text().split("\0")[:-1]
    assert argv[-4:] == ["alice", "-s", "proxy.example.com", subsystem]
    assert argv[argv.index("-p") + 1] == "3023"


#: A fixed "now" for the fake `date` in the reuse script's tests.
NOW = 2_000_000_000


@pytest.mark.parametrize("case", ["fresh", "old stamp", "expired", "unwritable", "odd validity"])
def test_openssh_reuse_script_decides_from_the_tag(
    tmp_path: Path, request: pytest.FixtureRequest, case: str
) -> None:
    """The reuse hop, run by sh as ssh runs it, with fake ``ssh`` and ``date`` logging their argv.

    A tag stamped by tsh (mtime: tsh._openssh.reuse.fresh_until) spares `date`;
    without the stamp (a tag written by an older tsh), `date` caps the persist.
    """
    import re
    import shutil
    import subprocess
    import tempfile
    import time

    from tsh._openssh.reuse import PERSIST_SECONDS, fresh_until

    mux = Path(tempfile.mkdtemp(prefix="mux", dir="/tmp"))  # short: a socket path must fit
    request.addfinalizer(lambda: shutil.rmtree(mux))
    prefix, tag = mux / "0123456789abcdef", tmp_path / "reuse"
    valid = {"fresh": int(time.time()) + 86400, "old stamp": NOW + 42, "expired": NOW - 1}
    tag.write_text(f"{valid.get(case, '12x')} {prefix}\n")
    if case == "fresh":
        stamp = fresh_until(valid[case])
        os.utime(tag, (stamp, stamp))
    if case == "unwritable":
        (mux / "0123456789abcdef-alice.now").mkdir()  # (root writes anywhere, but not that)
    text = render(dataclasses.replace(BASE, clusters=("root",), proxy_command="openssh",
                                      reuse_tag=str(tag)))  # fmt: skip
    command = next(ln for ln in text.splitlines() if "ProxyCommand" in ln).split("ProxyCommand ", 1)[1]
    tokens = {"r": "alice", "h": "node1.root", "p": "22", "%": "%"}
    line = re.sub(r"%(.)", lambda m: tokens[m.group(1)], command)
    log = tmp_path / "calls"
    (tmp_path / "ssh").write_text('#!/bin/sh\n{ printf "ssh"; printf " %s" "$@"; echo; } >> "$LOG"\n')
    (tmp_path / "date").write_text(f'#!/bin/sh\necho date >> "$LOG"\necho {NOW}\n')
    for fake in ("ssh", "date"):
        (tmp_path / fake).chmod(0o755)
    subprocess.run(["/bin/sh", "-c", f"exec {line}"], check=True, timeout=10,
                   env={"PATH": f"{tmp_path}:/usr/bin:/bin", "LOG": str(log)})  # fmt: skip
    calls = log.read_text().splitlines()
    hop = calls[-1].split()
    socket = f"{prefix}-alice"
    if case in ("fresh", "old stamp"):
        assert hop[hop.index("-S") + 1] == socket
        persist = {"fresh": PERSIST_SECONDS, "old stamp": 42}[case]
        assert f"-oControlPersist={persist}" in hop
        assert ("date" in calls) == (case == "old stamp")
        assert (mux / "0123456789abcdef-alice.lock").read_text().strip().isdigit()
    else:
        assert "-S" not in hop and not any("ControlPersist" in w for w in hop)
        assert (mux / "0123456789abcdef-alice.lock").exists() is False
    if case == "expired":  # the master, if any, is told to stop
        assert calls[:-1] == ["date", f"ssh -F /dev/null -S {socket} -O stop _"]
    if case in ("unwritable", "odd validity"):
        assert calls == [calls[-1]]  # neither `date` nor a word to a master
