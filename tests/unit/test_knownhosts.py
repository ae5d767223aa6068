"""tsh._core.knownhosts: @cert-authority lines, replacement on re-login."""

from __future__ import annotations

import pytest

from tsh import InvalidNameError, ProxyResponseError
from tsh._core.knownhosts import ca_lines, merge_known_hosts

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
