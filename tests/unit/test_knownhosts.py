"""tsh._core.knownhosts: @cert-authority lines, replacement on re-login."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsh import InvalidNameError, ProxyResponseError
from tsh._core.knownhosts import ca_lines, cluster_trust_lines, merge_known_hosts

K1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne"
K2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo= comment"


def test_line_format() -> None:
    assert ca_lines("proxy.test", "example.test", [K1 + "\n"]) == [
        "@cert-authority proxy.test,example.test,*.example.test " + K1 + " type=host"
    ]
    # the key's comment is dropped
    assert ca_lines("p", "c", [K2])[0].endswith("AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo= type=host")


@pytest.mark.parametrize("cluster", ["*", "a b", "c\n@cert-authority * x", "a,b", "", "-x"])
def test_hostile_cluster_names(cluster: str) -> None:
    with pytest.raises(InvalidNameError):
        ca_lines("proxy.test", cluster, [K1])


@pytest.mark.parametrize(
    "key", ["", "ssh-ed25519", "ssh-ed25519 AAA\n@cert-authority * k", "evil key"]
)
def test_hostile_keys(key: str) -> None:
    with pytest.raises(ProxyResponseError):
        ca_lines("proxy.test", "c", [key])


def test_relogin_replaces_and_dedupes() -> None:
    other = "@cert-authority other.test,o,*.o ssh-ed25519 AAAAOther type=host"
    mine = "# my own line\nbastion ssh-ed25519 AAAAbastion\n"
    first = merge_known_hosts(
        mine + other + "\n", "proxy.test", ca_lines("proxy.test", "c", [K1, K2])
    )
    again = merge_known_hosts(first, "proxy.test", ca_lines("proxy.test", "c", [K1, K2]))
    assert again == first
    rotated = merge_known_hosts(first, "proxy.test", ca_lines("proxy.test", "c", [K2]))
    assert "AAAAC3NzaC1lZDI1NTE5AAAAIOne" not in rotated
    assert rotated.count("AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo=") == 1
    assert rotated.startswith(mine)
    assert other in rotated


def test_merge_removes_proxy_lines_when_empty() -> None:
    text = merge_known_hosts("", "p", ca_lines("p", "c", [K1]))
    assert merge_known_hosts(text, "p", []) == ""


# --------------------------------------------------------------------------- leaves
ROOT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRoot"
LEAF_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILeaf"


def test_cluster_trust_lines_trust_the_root_ca_for_leaf_names_too() -> None:
    lines = cluster_trust_lines(
        "proxy.test", "root.test", {"root.test": [ROOT_KEY], "leaf.test": [LEAF_KEY]}
    )
    assert lines == [
        f"@cert-authority proxy.test,root.test,*.root.test {ROOT_KEY} type=host",
        f"@cert-authority proxy.test,leaf.test,*.leaf.test {LEAF_KEY} type=host",
        # the recording root proxy shows root-CA certificates for leaf nodes
        f"@cert-authority proxy.test,leaf.test,*.leaf.test {ROOT_KEY} type=host",
    ]
    # one profile's lines: a re-login replaces all of them
    assert merge_known_hosts("\n".join(lines) + "\n", "proxy.test", lines[:1]) == lines[0] + "\n"


def test_cluster_trust_lines_never_widen_a_pattern() -> None:
    with pytest.raises(InvalidNameError):
        cluster_trust_lines("proxy.test", "root.test", {"root.test": [ROOT_KEY], "*": [LEAF_KEY]})
    with pytest.raises(ProxyResponseError):
        cluster_trust_lines("proxy.test", "root.test", {"leaf.test": [LEAF_KEY]})  # no root CA


def test_cluster_trust_lines_match_with_ssh_keygen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """OpenSSH's own reading: the root CA answers for a leaf host, not for other names."""
    import shutil
    import subprocess

    import asyncssh

    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.skip("ssh-keygen is missing")
    root_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    leaf_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(cluster_trust_lines(
        "proxy.test", "root.test", {"root.test": [root_key], "leaf.test": [leaf_key]})) + "\n")

    def found(host: str) -> list[str]:
        r = subprocess.run([keygen, "-F", host, "-f", str(path)], capture_output=True, text=True)
        return [ln.split()[3] for ln in r.stdout.splitlines() if ln.startswith("@cert-authority")]

    assert found("node2.leaf.test") == [leaf_key.split()[1], root_key.split()[1]]
    assert found("node1.root.test") == [root_key.split()[1]]
    assert found("node2.other.test") == []


@settings(max_examples=300, deadline=None)
@given(leaf=st.text(min_size=0, max_size=20))
def test_cluster_trust_lines_hostile_leaf_names(leaf: str) -> None:
    """A leaf name from the auth API either is refused or stays one host pattern of its own."""
    try:
        lines = cluster_trust_lines(
            "proxy.test", "root.test", {"root.test": [ROOT_KEY], leaf: [LEAF_KEY]}
        )
    except InvalidNameError:
        return
    if leaf == "root.test":
        return
    for line in lines[1:]:
        marker, hosts, *rest = line.split(" ")
        assert marker == "@cert-authority" and "\n" not in line
        assert hosts.split(",") == ["proxy.test", leaf, f"*.{leaf}"]
        assert "*" not in leaf and "?" not in leaf and "!" not in leaf
        assert rest[-1] == "type=host"
