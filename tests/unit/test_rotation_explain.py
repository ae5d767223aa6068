"""tsh._core.rotation: export parsing and the explanations, each from the facts that support it."""

from __future__ import annotations

import subprocess
import tempfile

import asyncssh
import pytest

from tsh._core.rotation import Facts, explain, fingerprint, known_host_cas, parse_export


def _key() -> str:
    k = asyncssh.generate_private_key("ssh-ed25519")
    return " ".join(k.export_public_key("openssh").decode().split()[:2])


OLD, NEW, OTHER = _key(), _key(), _key()


def test_fingerprint_is_openssh_s() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".pub") as f:
        f.write(OLD + "\n")
        f.flush()
        out = subprocess.run(["ssh-keygen", "-l", "-f", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("ssh-keygen missing")
    assert out.stdout.split()[1] == fingerprint(OLD)


def test_parse_export_reads_both_formats_and_refuses_the_rest() -> None:
    text = (f"cert-authority {OLD} clustername=c&type=user\n"
            f"@cert-authority *.c {NEW} type=host\n\n")
    assert parse_export(text) == (OLD, NEW)
    with pytest.raises(ValueError):
        parse_export("ssh-ed25519 AAAA\n")
    with pytest.raises(ValueError):
        parse_export("cert-authority ssh-ed25519 not;base64 x\n")


def test_known_host_cas_picks_the_cluster_s_lines_only() -> None:
    text = (f"@cert-authority proxy,c.test,*.c.test {OLD} type=host\n"
            f"@cert-authority proxy,d.test,*.d.test {NEW} type=host\n"
            f"node.c.test {OTHER}\n")
    assert known_host_cas(text, "c.test") == (OLD,)


def test_proxy_untrusted_after_a_host_rotation_means_relogin() -> None:
    e = explain(Facts(trusted_host=[NEW, OLD], trusted_user=[OLD], known_host=[OLD],
                      proxy_untrusted=True))
    assert e is not None and e.kind == "host-ca-changed" and e.relogin_fixes


def test_proxy_untrusted_with_current_known_hosts_is_not_a_rotation() -> None:
    # we trust everything the cluster trusts: the proxy is presenting something else
    assert explain(Facts(trusted_host=[NEW], trusted_user=[OLD], known_host=[NEW],
                         proxy_untrusted=True)) is None


def test_node_on_a_rotated_away_host_ca_needs_its_admin() -> None:
    e = explain(Facts(trusted_host=[NEW], trusted_user=[OLD], known_host=[NEW],
                      node="node n1", node_host_ca=fingerprint(OLD), host_refused=True))
    assert e is not None and e.kind == "node-host-cert-stale" and not e.relogin_fixes
    assert e.message.startswith("node n1's host certificate")


def test_node_on_the_new_host_ca_with_old_known_hosts_means_relogin() -> None:
    e = explain(Facts(trusted_host=[NEW, OLD], trusted_user=[OLD], known_host=[OLD],
                      node_host_ca=fingerprint(NEW), host_refused=True))
    assert e is not None and e.kind == "host-ca-changed"


def test_node_with_a_ca_the_cluster_does_not_trust_needs_its_admin() -> None:
    e = explain(Facts(trusted_host=[NEW], trusted_user=[OLD], known_host=[NEW],
                      node_host_ca=fingerprint(OTHER), host_refused=True))
    assert e is not None and e.kind == "node-host-cert-stale"


def test_certificate_from_a_rotated_away_user_ca_means_relogin() -> None:
    e = explain(Facts(trusted_host=[NEW], trusted_user=[NEW], cert_ca=OLD, proxy_denied=True))
    assert e is not None and e.kind == "user-ca-rotated" and e.relogin_fixes


def test_node_refusing_a_current_certificate_needs_the_user_ca_re_exported() -> None:
    e = explain(Facts(trusted_host=[NEW], trusted_user=[NEW, OLD], cert_ca=NEW,
                      node="node n1", node_denied=True))
    assert e is not None and e.kind == "node-user-ca-stale"
    assert "tctl auth export --type=user" in e.message


@pytest.mark.parametrize("facts", [
    Facts(trusted_host=None, trusted_user=None, proxy_untrusted=True, proxy_denied=True),
    Facts(trusted_host=[NEW], trusted_user=[NEW], cert_ca=NEW, proxy_denied=True),
    Facts(trusted_host=[NEW], trusted_user=[NEW], cert_ca=None, node_denied=True),
    Facts(trusted_host=[NEW], trusted_user=[NEW], known_host=[NEW], cert_ca=NEW),
], ids=["proxy-unreachable", "proxy-denies-current-cert", "no-cert", "nothing-failed"])
def test_no_explanation_without_the_facts(facts: Facts) -> None:
    assert explain(facts) is None


def test_status_flags_a_dead_certificate_and_stale_known_hosts() -> None:
    from tsh._core.rotation import trust_warnings

    assert trust_warnings("joe@p", NEW, [NEW], [NEW], [NEW]) == []
    assert trust_warnings("joe@p", OLD, [OLD], [OLD, NEW], [NEW, OLD]) == [
        "the cluster of joe@p trusts a host CA that known_hosts lacks (CA rotation): run tsh login"
    ]
    assert trust_warnings("joe@p", OLD, [NEW], [NEW], [NEW]) == [
        "the certificate for joe@p is signed by a user CA the cluster no longer trusts "
        "(CA rotation): run tsh login"
    ]
    # known_hosts may hold more than the cluster trusts (a rollback): not a problem
    assert trust_warnings("joe@p", NEW, [NEW, OLD], [NEW], [NEW]) == []
