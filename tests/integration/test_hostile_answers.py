"""Property test: arbitrary strings in any ping or login field never escape into OpenSSH files.

For each example one field of the proxy's answers gets a hostile string. Then
either login refuses cleanly (a TshError, nothing else), or the profile it
stores renders configs (both ProxyCommand forms) for which OpenSSH's own
reading (``ssh -G``) shows only the intended host patterns and directives, whose
ProxyCommand, run by a shell as ssh runs it, executes exactly the intended
program with the intended arguments, and a known_hosts in which
``ssh-keygen -F`` finds nothing for an unrelated host.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tsh
from tests.unit._login_fakes import FakeProxy, ScriptedPrompter
from tsh import LoginRequest, ProfileStore, TshError
from tsh._openssh.config_file import ssh_config

pytestmark = pytest.mark.integration

PAYLOADS = [
    "[fe80::1%n'$(touch${IFS}PWNED)']:3023",
    "[fe80::1%n\nMatch exec \"touch PWNED\"]:3023",
    "[fe80::1%x,*]:3080",
    "*",
    "x\nHost *\n  ProxyCommand touch PWNED",
    "a b",
    "a,*",
    "!x",
    "$(touch PWNED)",
    "`touch PWNED`",
    "'; touch PWNED; '",
    "x%h",
    "a\"b",
    "ssh-ed25519 AAAA\n@cert-authority * ssh-ed25519 AAAA",
    "::1",
    "[::1]:1",
    "h.example:22",
    "10.0.0.1:99999",
    "\x1b[2J",
]
# The fields a proxy fills in: ping ("p:" JSON path) and login ("l:" JSON path;
# "keys"/"tls" are base64 of text; "principal" goes into the signed certificate).
FIELDS = [
    "p:cluster_name",
    "p:server_version",
    "p:min_client_version",
    "p:auth.type",
    "p:auth.second_factor",
    "p:auth.private_key_policy",
    "p:auth.default_session_ttl",
    "p:proxy.ssh.public_addr",
    "p:proxy.ssh.ssh_public_addr",
    "p:proxy.ssh.listen_addr",
    "l:username",
    "l:domain_name",
    "l:keys",
    "l:tls",
    "l:principal",
]
hostile = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(max_size=30),
    st.text(alphabet="ab.:[]%*!,$'\"\n `-_19", max_size=30),
    st.builds(lambda a, b: a + b, st.sampled_from(["h.example", "[::1]", "c"]), st.text(max_size=8)),
)

FAKE = '#!/bin/sh\nprintf "%s\\0" "$0" "$@" >> "$ARGV_LOG"\n'


def _set(data: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[last] = value


def _proxy_with(field: str, value: str) -> FakeProxy:
    fake = FakeProxy()
    kind, _, path = field.partition(":")
    if kind == "p":
        ping = fake.ping_json()
        _set(ping, path, value)
        fake.ping_raw = (200, json.dumps(ping).encode(), "application/json")
    elif path == "principal":
        fake.logins = [value]
    else:
        def hook(answer: dict[str, Any], _body: dict[str, Any]) -> None:
            signer = answer["host_signers"][0]
            if path == "username":
                answer["username"] = value
            elif path == "domain_name":
                signer["domain_name"] = value
            elif path == "keys":
                signer["checking_keys"] = [base64.b64encode(value.encode()).decode()]
            else:
                signer["tls_certs"] = [base64.b64encode(value.encode()).decode()]

        fake.login_hook = hook
    return fake


def _expand(command: str, login: str, host: str, port: str) -> str:
    """OpenSSH's %-expansion of a ProxyCommand (%r, %h, %p, %%)."""
    tokens = {"r": login, "h": host, "p": port, "%": "%"}
    return re.sub(r"%(.)", lambda m: tokens[m.group(1)], command)


def _check_config(text: str, profile: tsh.Profile, work: Path, form: str, openssh) -> None:  # type: ignore[no-untyped-def]
    cfg = work / f"config-{form}"
    cfg.write_text(text)
    clusters = [c.lower() for c in profile.clusters]
    proxy = profile.proxy_host.lower()
    # Only Host lines with the intended patterns, and only the directives tsh writes.
    allowed = {"host", "userknownhostsfile", "identityfile", "identitiesonly", "certificatefile",
               "user", "port", "proxycommand", "hostkeyalgorithms"}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        assert words[0].lower() in allowed, line
        if words[0] == "Host":
            assert len(words) == 3 and words[1] in {f"*.{c}" for c in clusters}, line
            assert words[2] in (proxy, f"!{proxy}"), line
    resolve = [openssh.ssh, "-G", "-F", str(cfg)]
    unrelated = subprocess.run([*resolve, "unrelated.example.org"], capture_output=True,
                               text=True, check=True).stdout
    assert "proxycommand" not in unrelated and str(work) not in unrelated
    node = f"node1.{clusters[0]}"
    out = subprocess.run([*resolve, node], capture_output=True, text=True, check=True).stdout
    command = next(ln for ln in out.splitlines() if ln.startswith("proxycommand ")).split(" ", 1)[1]
    # Run it as ssh does ($SHELL -c "exec ..."), with fake ssh/tsh that log their argv.
    log = work / f"argv-{form}"
    env = {"PATH": f"{work}:/usr/bin:/bin", "ARGV_LOG": str(log), "HOME": str(work)}
    subprocess.run(["/bin/sh", "-c", "exec " + _expand(command, "root", node, "3022")],
                   env=env, cwd=work, check=False, timeout=10, capture_output=True)
    argv = log.read_text().split("\0")[:-1]
    assert not list(work.glob("*PWNED*")) and not (Path.cwd() / "PWNED").exists()
    if form == "openssh":
        assert argv[0] == "ssh" or argv[0].endswith("/ssh")
        assert argv[-1] == f"proxy:node1:3022@{profile.clusters[0]}"
        assert argv[-2] == profile.ssh_proxy_addr.rsplit(":", 1)[0].strip("[]")
    else:
        assert argv[0] == str(work / "fake-tsh")
        assert argv[1:] == ["proxy", "ssh", f"--cluster={profile.clusters[0]}",
                            f"--proxy={profile.web_proxy_addr}", f"root@{node}:3022"]


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=hostile)
def test_hostile_field_is_refused_or_harmless(openssh, field: str, value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        kh_other = "@cert-authority other.example,o,*.o ssh-ed25519 AAAAC3Nz type=host\n"
        home.mkdir(mode=0o700)
        (home / "known_hosts").write_text(kh_other)
        for name in ("ssh", "fake-tsh"):
            (work / name).write_text(FAKE)
            os.chmod(work / name, 0o755)
        fake = _proxy_with(field, value)
        store = ProfileStore(home)
        try:
            result = tsh.login(
                LoginRequest(proxy="proxy.example.com:3080", user="alice", agent_mode="no"),
                ScriptedPrompter(), store=store, transport=fake.transport, environ={},
            )
        except TshError as e:
            assert "\n" not in str(e)
            assert (home / "known_hosts").read_text() == kh_other
            assert not list(home.glob("*.yaml"))
            return
        profile = store.load(result.profile.name)  # as tsh config will read it
        found = subprocess.run(
            [openssh.ssh_keygen, "-F", "unrelated.example.org", "-f", str(home / "known_hosts")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert found.returncode == 1, found.stdout
        for line in (home / "known_hosts").read_text().splitlines():
            if line != kh_other.strip():
                hosts = line.split()[1]
                c = hosts.split(",")[1]
                assert hosts == f"{profile.proxy_host},{c},*.{c}" and c in profile.clusters
        with mock.patch("tsh._openssh.config_file.tsh_executable", return_value=(str(work / "fake-tsh"),)):
            for form in ("tsh", "openssh"):
                _check_config(ssh_config(profile, store, proxy_command=form), profile, work,
                              form, openssh)
