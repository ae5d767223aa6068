"""Why did OpenSSH fail? Gather the facts a CA rotation leaves, then explain (tsh._core.rotation).

Only after ssh (or the hop) failed, so nothing here costs a successful
connection anything. The facts:

- what the cluster trusts now: the public ``/webapi/auth/export`` (short deadline);
- what the profile trusts: its known_hosts lines for the cluster;
- which CA signed the profile's user certificate;
- for a node, one more OpenSSH run with ``-v`` and ``BatchMode`` that never
  runs anything on the node (``-N``, stopped as soon as it is authenticated):
  the CA of the node's host certificate (OpenSSH's ``Server host certificate``
  line), whether ssh refused that host key, whether the node refused us.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace

from .._core.profile import Profile
from .._core.rotation import Explanation, Facts, explain, known_host_cas
from .._exceptions import TshError
from .._store.layout import ProfilePaths
from .._store.store import ProfileStore
from .argv import HOP_ERRORS_ENV, SSHRequest, parse_destination, ssh_argv

__all__ = [
    "Probe", "cert_ca", "cluster_trust", "diagnose_node", "explain_proxy_failure",
    "explain_ssh_failure", "known_keys", "probe_node", "status_warnings",
]

#: Seconds the export may take: an explanation must not hold up an error.
EXPORT_DEADLINE = 3.0
PROBE_TIMEOUT = 20.0
_HOST_CERT_CA = re.compile(r"Server host certificate: .* CA \S+ (SHA256:[A-Za-z0-9+/]+)")


def cluster_trust(
    profile: Profile, deadline: float = EXPORT_DEADLINE
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The cluster's trusted host and user CA keys now; (None, None) if the proxy can't say."""
    from .._web.client import WebClient

    try:
        with WebClient(profile.web_proxy_addr, timeout=deadline, deadline=deadline) as web:
            return web.auth_export("host"), web.auth_export("user")
    except TshError:
        return None, None


def known_keys(paths: ProfilePaths, cluster: str) -> tuple[str, ...]:
    """The host CA keys the profile's known_hosts trusts for ``cluster`` (() if unreadable)."""
    try:
        with open(paths.known_hosts, encoding="utf-8", errors="replace") as f:
            return known_host_cas(f.read(), cluster)
    except OSError:
        return ()


def cert_ca(paths: ProfilePaths, profile: Profile) -> str | None:
    """``<type> <base64>`` of the CA key that signed the profile's SSH certificate."""
    from .._asyncssh import asyncssh

    try:
        with open(paths.ssh_cert(profile.cluster), encoding="ascii") as f:
            cert = asyncssh.import_certificate(f.read().strip())
    except (OSError, ValueError, UnicodeDecodeError, asyncssh.KeyImportError):
        return None
    signer = cert.signing_key  # type: ignore[attr-defined]  # set by asyncssh, not declared
    return " ".join(signer.export_public_key("openssh").decode().split()[:2])


class Probe:
    """What one ``ssh -v`` attempt showed."""

    def __init__(self, stderr: str, hop: str) -> None:
        self.stderr, self.hop = stderr, hop
        match = _HOST_CERT_CA.search(stderr)
        self.node_host_ca = match.group(1) if match else None
        self.authenticated = "Authenticated to " in stderr
        self.host_refused = "Host key verification failed." in stderr
        # The hop's own words (its stderr file), or `tsh proxy ssh`'s line about it.
        # (`tsh proxy ssh` may already have explained a rotation: the same facts again.)
        self.proxy_untrusted = "Host key verification failed" in hop or any(
            sign in stderr for sign in (" is not trusted: ", "host CA has changed")
        )
        self.proxy_denied = "Permission denied" in hop or any(
            sign in stderr for sign in ("refused the certificate", "user CA the cluster no longer")
        )
        self.node_denied = not self.proxy_denied and "Permission denied (" in stderr
        self.node_spoke = "Remote protocol version" in stderr  # the node's SSH- banner arrived

    def failing_hop(self, host: str) -> tuple[str, str]:
        """(what failed, what to do) for `tsh doctor HOST`, naming the hop that failed."""
        if self.proxy_untrusted:
            return ("the proxy's host certificate is not signed by a CA in known_hosts",
                    "run tsh login")
        if self.proxy_denied:
            return "the proxy refused your certificate", "run tsh login"
        hop_lines = [ln.strip() for ln in self.hop.splitlines() if ln.strip()]
        if hop_lines and not self.node_spoke:
            return (f"the proxy did not connect you to {host}: {hop_lines[-1]}",
                    "check the node's name and port (and that it is registered)")
        if self.host_refused:
            return (f"{host}'s host key is not certified by a CA in known_hosts",
                    "the node's admin must sign its host key: tctl auth sign --host=... "
                    "--format=openssh")
        if self.node_denied:
            return (f"{host} refused your certificate",
                    "check the login; the node's TrustedUserCAKeys must hold "
                    "`tctl auth export --type=user`")
        if not self.node_spoke:
            return (f"{host} closed the connection before its SSH banner "
                    "(sshd MaxStartups drops, or nothing listens there)",
                    "retry; or raise MaxStartups in the node's sshd_config")
        lines = [ln for ln in self.stderr.splitlines() if ln.strip() and not ln.startswith("debug")]
        return (lines[-1] if lines else f"ssh to {host} failed"), ""


def probe_node(argv: Sequence[str], timeout: float = PROBE_TIMEOUT) -> Probe:
    """Run ``argv`` (an ``ssh -N`` built with ``hop_errors``) verbosely until it logs in or ends."""
    import selectors

    with tempfile.TemporaryDirectory(prefix="tsh-probe-") as tmp:
        hop_file = os.path.join(tmp, "hop")
        env = {**os.environ, HOP_ERRORS_ENV: hop_file}
        proc = subprocess.Popen(
            [argv[0], "-v", *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env, start_new_session=True,
        )  # fmt: skip
        assert proc.stderr is not None
        text = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline and b"Authenticated to " not in text:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                text += chunk
        proc.kill()  # logged in (nothing runs: -N) or done
        proc.wait()
        proc.stderr.close()
        try:
            with open(hop_file, encoding="utf-8", errors="replace") as f:
                hop = f.read()
        except OSError:
            hop = ""
    return Probe(text.decode("utf-8", "replace"), hop)


def diagnose_node(
    store: ProfileStore,
    profile: Profile,
    request: SSHRequest,
    destination: str,
    ssh: str = "ssh",
) -> tuple[Probe, Explanation | None]:
    """Probe ``destination`` through the proxy; the probe and its rotation explanation."""
    import getpass

    paths = store.paths_for(profile)
    login, host = parse_destination(destination, request.login)
    login = login or getpass.getuser()
    probe_request = replace(
        request, no_command=True, tty=False, forward_agent=False, local_forwards=(),
        remote_forwards=(), dynamic_forward=None,
        options=("BatchMode=yes", "ControlPath=none", "PermitLocalCommand=no", *request.options),
    )  # fmt: skip
    argv = ssh_argv(profile, paths, probe_request, destination, (), ssh=ssh, hop_errors=True)
    probe = probe_node(argv)
    return probe, (None if probe.authenticated else _explain_probe(
        store, profile, request, paths, probe, host, login))


def explain_ssh_failure(
    store: ProfileStore,
    profile: Profile,
    request: SSHRequest,
    destination: str,
    ssh: str = "ssh",
) -> Explanation | None:
    """After `tsh ssh`/`tsh scp` saw ssh exit 255: a rotation explanation, or None.

    The probe's hop is always OpenSSH's own (not `tsh proxy ssh`): its words land
    in a file before ssh ends it, so the proxy's refusals are facts, not a race.
    """
    return diagnose_node(store, profile, request, destination, ssh)[1]


def _explain_probe(
    store: ProfileStore, profile: Profile, request: SSHRequest, paths: ProfilePaths,
    probe: Probe, host: str, login: str,
) -> Explanation | None:
    trusted_host, trusted_user = cluster_trust(profile)
    cluster = request.cluster or profile.cluster
    facts = Facts(
        trusted_host=trusted_host,
        trusted_user=trusted_user,
        known_host=known_keys(paths, cluster),
        cert_ca=cert_ca(paths, profile),
        node=f"node {host}",
        node_host_ca=probe.node_host_ca,
        proxy_untrusted=probe.proxy_untrusted,
        host_refused=probe.host_refused,
        proxy_denied=probe.proxy_denied,
        # a login the certificate does not name is refused everywhere, rotation or not
        node_denied=probe.node_denied and login in profile.principals,
    )
    return explain(facts)


def explain_proxy_failure(
    store: ProfileStore, profile: Profile, untrusted: bool, denied: bool
) -> Explanation | None:
    """After the hop to the proxy failed (`tsh proxy ssh`): a rotation explanation, or None."""
    paths = store.paths_for(profile)
    trusted_host, trusted_user = cluster_trust(profile)
    return explain(
        Facts(
            trusted_host=trusted_host,
            trusted_user=trusted_user,
            known_host=known_keys(paths, profile.root_cluster or profile.cluster),
            cert_ca=cert_ca(paths, profile),
            proxy_untrusted=untrusted,
            proxy_denied=denied,
        )
    )


def status_warnings(store: ProfileStore, profile: Profile, deadline: float) -> list[str]:
    """`tsh status`'s rotation flags for ``profile`` (nothing if the proxy cannot say in time)."""
    paths = store.paths_for(profile)
    trusted_host, trusted_user = cluster_trust(profile, deadline)
    if trusted_host is None or trusted_user is None:
        return []
    from .._core.rotation import trust_warnings

    return trust_warnings(
        f"{profile.user}@{profile.name}", cert_ca(paths, profile),
        known_keys(paths, profile.root_cluster or profile.cluster), trusted_host, trusted_user,
    )  # fmt: skip
