"""`tsh doctor`: check, in order, everything the OpenSSH path needs, and say what to do.

Each check is a function returning a :class:`Check`; :func:`run_checks` runs
them in the documented order, passing on what earlier ones found (a check
that depends on a failed one is skipped, with the reason). Everything is
learned by trying: OpenSSH's own ``ssh -V``, ``ssh -G``, ``ssh-add`` and
``ssh -v`` are the oracles, and an agent is judged by whether it holds a
certificate, not by its socket's name.

The CLI (tsh.cli.doctor) only renders the result.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._core.profile import Profile
from ._exceptions import TshError
from ._store.store import ProfileStore

__all__ = ["Check", "CheckStatus", "Doctor", "MIN_OPENSSH", "run_checks"]

CheckStatus = Literal["ok", "warn", "fail", "skip"]
#: The oldest OpenSSH client the Teleport OpenSSH guide supports (issue #17's floor).
MIN_OPENSSH = (6, 9)
_TIMEOUT = 15.0


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, and the fix when it failed."""

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _run(argv: list[str], env: Mapping[str, str] | None = None, input: str | None = None,
         timeout: float = _TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, input=input,
                          timeout=timeout, check=False)


@dataclass
class Doctor:
    """The checks, over an environment and a profile store (both replaceable in tests)."""

    store: ProfileStore = field(default_factory=ProfileStore)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    ssh_config: Path | None = None  # default: ~/.ssh/config of $HOME
    proxy: str | None = None
    profile: Profile | None = None

    # ---- 1. OpenSSH
    def openssh(self) -> Check:
        from ._openssh.config_file import openssh_version

        version = openssh_version("ssh")
        if version is None:
            return Check("openssh", "fail", "no OpenSSH client (ssh) on PATH",
                         "install the OpenSSH client (6.9 or later)")
        text = f"OpenSSH {version[0]}.{version[1]}"
        if version < MIN_OPENSSH:
            return Check("openssh", "fail", f"{text} is older than 6.9",
                         "install OpenSSH 6.9 or later")
        return Check("openssh", "ok", text)

    # ---- 2. the agent
    def agent(self) -> Check:
        sock = self.env.get("SSH_AUTH_SOCK")
        if not sock:
            return Check("agent", "fail", "SSH_AUTH_SOCK is not set",
                         "start an agent: eval $(ssh-agent), then tsh login")
        listed = _run(["ssh-add", "-l"], env={**self.env, "SSH_AUTH_SOCK": sock})
        if listed.returncode == 2:  # ssh-add: "Could not open a connection to your agent"
            return Check("agent", "fail", f"no agent answers at SSH_AUTH_SOCK={sock}",
                         "start an agent: eval $(ssh-agent), then tsh login")
        if not _holds_certificates(sock, self.env):
            return Check(
                "agent", "fail",
                f"the agent at {sock} accepts keys but does not keep SSH certificates "
                "(gpg-agent, gnome-keyring and some password managers do this)",
                "use OpenSSH's ssh-agent: eval $(ssh-agent), then tsh login",
            )  # fmt: skip
        return Check("agent", "ok", f"the agent at {sock} holds certificates")

    # ---- 3. the certificate
    def certificate(self, agent_ok: bool) -> Check:
        try:
            profile = self.store.select(self.proxy)
        except TshError as e:
            return Check("certificate", "fail", str(e), "run tsh login --proxy=PROXY")
        self.profile = profile
        now = time.time()
        if profile.valid_before <= now:
            return Check("certificate", "fail", f"the certificate for {profile.name} has expired",
                         f"run tsh login --proxy={profile.web_proxy_addr}")
        paths = self.store.paths_for(profile)
        cert = paths.ssh_cert(profile.cluster)
        if not os.path.isfile(cert):
            return Check("certificate", "fail", f"{cert} is missing",
                         f"run tsh login --proxy={profile.web_proxy_addr}")
        left = int(profile.valid_before - now)
        detail = f"{profile.user}@{profile.name}, valid for {left // 3600}h{left % 3600 // 60}m"
        if agent_ok:
            from ._agent.probe import agent_holds_certificate

            if not agent_holds_certificate(cert, self.env.get("SSH_AUTH_SOCK")):
                return Check("certificate", "warn", f"{detail}, but not in the agent",
                             f"run tsh login --proxy={profile.web_proxy_addr} (it loads the agent)")
            detail += ", in the agent"
        return Check("certificate", "ok", detail)

    # ---- 4. known_hosts against the cluster (rotation)
    def known_hosts(self) -> Check:
        if self.profile is None:
            return Check("known_hosts", "skip", "no usable profile")
        from ._core.rotation import trust_warnings
        from ._openssh.explain import cert_ca, cluster_trust, known_keys

        profile = self.profile
        trusted_host, trusted_user = cluster_trust(profile)
        if trusted_host is None or trusted_user is None:
            return Check("known_hosts", "skip", "the proxy did not say which CAs it trusts")
        paths = self.store.paths_for(profile)
        warnings = trust_warnings(
            f"{profile.user}@{profile.name}", cert_ca(paths, profile),
            known_keys(paths, profile.root_cluster or profile.cluster), trusted_host, trusted_user,
        )  # fmt: skip
        if warnings:
            return Check("known_hosts", "fail", "; ".join(w.split(" (CA rotation)")[0]
                                                          for w in warnings),
                         f"run tsh login --proxy={self.profile.web_proxy_addr} (CA rotation)")
        return Check("known_hosts", "ok",
                     f"the host CA lines match the {len(trusted_host)} key(s) the cluster trusts")

    # ---- 5. ~/.ssh/config
    def ssh_config_block(self) -> Check:
        if self.profile is None:
            return Check("ssh_config", "skip", "no usable profile")
        path = self.ssh_config or Path(self.env.get("HOME", str(Path.home()))) / ".ssh" / "config"
        if not path.is_file():
            return Check("ssh_config", "fail", f"{path} does not exist",
                         f"tsh config >> {path}")
        from ._openssh.config_file import ssh_config

        profile = self.profile
        clusters = tuple(profile.clusters) or (profile.root_cluster or profile.cluster,)
        with tempfile.TemporaryDirectory(prefix="tsh-doctor-") as tmp:
            rendered = []
            for form in ("tsh", "openssh"):
                fresh = Path(tmp, form)
                fresh.write_text(ssh_config(profile, self.store, proxy_command=form))
                rendered.append(fresh)
            for cluster in clusters:
                host = f"doctor-check.{cluster}"
                have = _ssh_G(path, host)
                wanted = [_ssh_G(f, host) for f in rendered]
                if have.get("userknownhostsfile", "").split(" ")[0] != wanted[0].get(
                    "userknownhostsfile", ""
                ).split(" ")[0] or "proxycommand" not in have:
                    return Check("ssh_config", "fail",
                                 f"{path} has no Teleport block for {host}",
                                 f"tsh config >> {path}")
                keys = ("proxycommand", "certificatefile", "identityfile", "userknownhostsfile")
                if not any(all(_same(k, have.get(k), w.get(k)) for k in keys) for w in wanted):
                    return Check("ssh_config", "fail",
                                 f"the Teleport block in {path} is out of date (for {host})",
                                 f"tsh config --update={path}")
        return Check("ssh_config", "ok",
                     f"{path} is current for {', '.join(clusters)}")

    # ---- 6. the proxy
    def proxy_reachable(self) -> Check:
        if self.profile is None:
            return Check("proxy", "skip", "no usable profile")
        from ._core.addr import SSH_PROXY_PORT, split_host_port
        from ._web.client import WebClient

        profile = self.profile
        try:
            with WebClient(profile.web_proxy_addr, timeout=5, deadline=8) as web:
                ping = web.ping()
        except TshError as e:
            return Check("proxy", "fail", f"web API: {e}",
                         "check the proxy address, your network and SSL_CERT_FILE")
        if ping.ssh_proxy_addr == profile.web_proxy_addr:  # TLS routing: SSH is on the web port
            return Check("proxy", "ok", f"web API at {profile.web_proxy_addr} (TLS routing)")
        host, port = split_host_port(profile.ssh_proxy_addr, SSH_PROXY_PORT)
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.settimeout(5)
                banner = s.recv(64)
        except OSError as e:
            return Check("proxy", "fail", f"SSH port {profile.ssh_proxy_addr}: {e}",
                         "the proxy's SSH port is unreachable: check firewalls")
        if not banner.startswith(b"SSH-"):
            return Check("proxy", "fail", f"{profile.ssh_proxy_addr} does not speak SSH",
                         "check the proxy's ssh_public_addr")
        return Check("proxy", "ok",
                     f"web API at {profile.web_proxy_addr}, SSH at {profile.ssh_proxy_addr}")

    # ---- 7. a node, hop by hop
    def node(self, host: str, port: int | None = None) -> Check:
        if self.profile is None:
            return Check("node", "skip", "no usable profile")
        from ._openssh.argv import SSHRequest, parse_destination
        from ._openssh.explain import diagnose_node

        try:
            _, name = parse_destination(host)
            probe, explanation = diagnose_node(self.store, self.profile, SSHRequest(port=port),
                                               host)
        except TshError as e:
            return Check("node", "fail", str(e))
        if probe.authenticated:
            return Check("node", "ok", f"logged in to {name} through the proxy")
        if explanation is not None:  # a CA rotation: its own words, split into what and fix
            what, _, fix = explanation.message.rpartition(": ")
            return Check("node", "fail", what, fix)
        return Check("node", "fail", *probe.failing_hop(name))


def _same(keyword: str, have: str | None, wanted: str | None) -> bool:
    """Equal ``ssh -G`` values; for `tsh proxy ssh` ProxyCommands, whatever starts tsh."""
    if keyword == "proxycommand" and have and wanted and " proxy ssh " in wanted:
        return " proxy ssh " in have and have.split(" proxy ssh ", 1)[1] == wanted.split(
            " proxy ssh ", 1
        )[1]
    return have == wanted


def _ssh_G(config: Path, host: str) -> dict[str, str]:
    out = _run(["ssh", "-G", "-F", str(config), host]).stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, value)
    return values


def _holds_certificates(sock: str, env: Mapping[str, str]) -> bool:
    """Add a throwaway certified key for 30 s, see whether the agent lists the certificate,
    remove it again."""
    with tempfile.TemporaryDirectory(prefix="tsh-doctor-") as tmp:
        ca, key = os.path.join(tmp, "ca"), os.path.join(tmp, "probe")
        for path in (ca, key):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tsh-doctor", "-f", path])
        _run(["ssh-keygen", "-q", "-s", ca, "-I", "tsh-doctor", "-n", "tsh-doctor", "-V", "+5m",
              f"{key}.pub"])
        agent_env = {**env, "SSH_AUTH_SOCK": sock}
        try:
            cert = Path(f"{key}-cert.pub").read_text().split()[1]
        except (OSError, IndexError):
            return True  # ssh-keygen could not make one: not the agent's fault
        _run(["ssh-add", "-q", "-t", "30", key], env=agent_env)
        listed = _run(["ssh-add", "-L"], env=agent_env).stdout
        _run(["ssh-add", "-q", "-d", key], env=agent_env)
    return any(line.split()[1:2] == [cert] for line in listed.splitlines())


def run_checks(
    doctor: Doctor, host: str | None = None, port: int | None = None,
    on_check: Callable[[Check], Any] | None = None,
) -> list[Check]:
    """Every check in order (the node one only with ``host``); ``on_check`` sees each as it ends."""
    checks: list[Check] = []

    def record(check: Check) -> Check:
        checks.append(check)
        if on_check is not None:
            on_check(check)
        return check

    record(doctor.openssh())
    agent = record(doctor.agent())
    record(doctor.certificate(agent.status == "ok"))
    record(doctor.known_hosts())
    record(doctor.ssh_config_block())
    proxy = record(doctor.proxy_reachable())
    if host is not None:
        if proxy.status == "fail":
            record(Check("node", "skip", "the proxy is unreachable"))
        else:
            record(doctor.node(host, port))
    return checks
