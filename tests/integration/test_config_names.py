"""Names in `tsh config` output, checked with OpenSSH's own parser (`ssh -G`) as the oracle.

For every accepted cluster name, proxy host and login, a host inside the
cluster resolves exactly the generated values and a host outside the cluster
none of them; every refused name raises InvalidNameError.
"""

from __future__ import annotations

import getpass
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsh import InvalidNameError
from tsh._openssh.config import SSHConfigParams, render

pytestmark = pytest.mark.integration

KH = "/home/a b/.tsh/known_hosts"
KEY = "/home/a b/.tsh/keys/p/alice"
CERT = "/home/a b/.tsh/keys/p/alice-ssh/c-cert.pub"
TSH = "/opt/t s h/bin/tsh"

label = st.from_regex(r"[a-z0-9_][a-z0-9_-]{0,8}", fullmatch=True)
dns_name = st.lists(label, min_size=1, max_size=3).map(".".join)
hostile = st.text(alphabet=" \t\n\r,*?!%\"'\\$`;#=@:/\x00éA.a-", min_size=1, max_size=12)
name = st.one_of(dns_name, dns_name, dns_name.map(str.upper), hostile)
login = st.one_of(st.from_regex(r"[a-z_][a-z0-9._@-]{0,10}", fullmatch=True), hostile)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cluster=name, proxy=name, user=login, form=st.sampled_from(["tsh", "openssh"]))
def test_generated_values_apply_exactly_inside_the_cluster(
    ssh_G, cluster: str, proxy: str, user: str, form: str
) -> None:
    params = SSHConfigParams(
        proxy_host=proxy, proxy_port=3080, ssh_proxy_host=proxy, ssh_proxy_port=3023,
        clusters=(cluster,), known_hosts=KH, identity_file=KEY, certificate_file=CERT,
        executable=(TSH,), port=3022, login=user, proxy_command=form,
    )
    try:
        text = render(params)
    except InvalidNameError:
        return  # refused: nothing was written
    assert text.count("\nHost ") == 2  # no name added a block
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "config"
        cfg.write_text(text)
        inside = ssh_G(f"node1.{cluster}".lower(), config=cfg)
        assert inside["user"] == user
        assert inside["port"] == "3022"
        assert inside["userknownhostsfile"] == KH
        assert inside["identityfile"] == KEY
        assert inside["certificatefile"] == CERT
        command = inside["proxycommand"]
        if form == "tsh":
            # (ssh -G shows ProxyCommand before token expansion)
            assert command == (
                f"'{TSH}' proxy ssh --cluster='{cluster}' --proxy='{proxy}:3080' '%r@%h:%p'"
            )
        else:
            assert command.endswith(
                f"tsh-proxy '%r' '%h' '%p' 'UserKnownHostsFile \"{KH}\"' "
                f"'CertificateFile \"{CERT}\"' '{KEY}' '{proxy.lower()}' '{cluster.lower()}' "
                f"'3023' '{proxy}' '{cluster}'"
            )
        # The proxy itself gets the files and login, but no ProxyCommand.
        on_proxy = ssh_G(proxy.lower(), config=cfg)
        assert on_proxy["identityfile"] == KEY and "proxycommand" not in on_proxy
        # Outside the cluster: none of it.
        for host in (f"x{cluster}", cluster, f"node1.{cluster}.evil", "example.invalid"):
            if host.lower() == proxy.lower():
                continue
            outside = ssh_G(host.lower(), config=cfg)
            assert "proxycommand" not in outside
            assert outside["port"] == "22"
            assert outside.get("userknownhostsfile") != KH
            assert outside.get("identityfile") != KEY
            assert "certificatefile" not in outside
            if user != getpass.getuser():
                assert outside["user"] != user
