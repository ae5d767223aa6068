"""The OpenSSH client configuration `tsh config` prints (pure, no I/O).

The text follows real tsh's current template (Teleport's
lib/config/openssh): a header, then per cluster (root first, then leaves) a
``Host *.<cluster> <proxyhost>`` block with the files to authenticate with and
a ``Host *.<cluster> !<proxyhost>`` block with the node port and ProxyCommand,
then a footer. The local OpenSSH version is passed in (``ssh_version``), so
tests need no ``ssh -V``.

Every interpolated value is validated here again (tsh._core.names): the renderer
never trusts its caller to have done it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .._core.addr import DEFAULT_NODE_PORT, join_host_port
from .._core.names import (
    shell_word,
    validate_cluster_name,
    validate_host,
    validate_login,
    validate_path,
    validate_port,
)
from .._exceptions import UsageError
from .._proxy.dial import command_line, openssl_words
from .hop import HOP_OPTIONS
from .reuse import CONTROL_PATH_MAX, MASTER_KEEPALIVE, PERSIST_SECONDS

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "SSHConfigParams",
    "merge",
    "parse_openssh_version",
    "render",
    "tsh_proxy_command",
]

BEGIN_MARKER = "# Begin generated Teleport configuration for "
END_MARKER = "# End generated Teleport configuration"
PROXY_COMMANDS = ("tsh", "openssh")

#: OpenSSH older than 7.8 must be told to ask nodes for their certificate.
_LEGACY_HOST_KEY_ALGORITHMS = "ssh-rsa-cert-v01@openssh.com"


@dataclass(frozen=True)
class SSHConfigParams:
    """Everything the configuration text depends on.

    Attributes:
        proxy_host: host of the web proxy address (the profile's name).
        proxy_port: port of the web proxy address (443, 3080, ...).
        ssh_proxy_host: host of the SSH proxy (``openssh`` form only).
        ssh_proxy_port: port of the SSH proxy, usually 3023 (``openssh`` form only).
        clusters: root cluster first, then leaf clusters.
        known_hosts: absolute path of tsh's known_hosts.
        identity_file: private key, or the public key when ``identities_only``.
        certificate_file: the root cluster's SSH certificate (used for all clusters).
        executable: how to run tsh: ``("/abs/tsh",)``, ``("/abs/python", "-m", "tsh")``
            or ``("/abs/python", "/abs/tsh.pyz")``.
        port: node port (``Port``), default 3022.
        login: optional ``User``.
        proxy_command: ``"tsh"`` (tsh proxy ssh) or ``"openssh"`` (ssh -s proxy:...).
        identities_only: the private key lives only in the agent (``-k only``):
            point IdentityFile at the public key and add ``IdentitiesOnly yes``.
        ssh_version: local OpenSSH (major, minor), or None if unknown.
        tls_ca_file: under TLS routing, the root cluster's host CA (``cas/<cluster>.pem``):
            the openssh form's hop then reaches the web port through ``openssl s_client``.
        conn_upgrade: TLS routing behind an L7 load balancer: no openssh form exists.
        reuse: share one authenticated connection to the proxy between hops
            (tsh._openssh.reuse); False writes ``--no-reuse`` into the tsh form.
        reuse_tag: the profile's reuse tag file, which the ``openssh`` form reads
            at each connection (absolute path; "" for no reuse).
    """

    proxy_host: str
    proxy_port: int
    ssh_proxy_host: str
    ssh_proxy_port: int
    clusters: Sequence[str]
    known_hosts: str
    identity_file: str
    certificate_file: str
    executable: Sequence[str] = ()
    port: int = DEFAULT_NODE_PORT
    login: str | None = None
    proxy_command: str = "tsh"
    identities_only: bool = False
    ssh_version: tuple[int, int] | None = None
    tls_ca_file: str = ""
    conn_upgrade: bool = False
    reuse: bool = True
    reuse_tag: str = ""


def parse_openssh_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from ``ssh -V`` output such as ``OpenSSH_9.2p1 Debian...``."""
    m = re.search(r"OpenSSH_(?:for_Windows_)?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _check(p: SSHConfigParams) -> None:
    if not p.clusters:
        raise UsageError("the profile knows no cluster; log in again")
    for c in p.clusters:
        validate_cluster_name(c)
    validate_host(p.proxy_host, "proxy host")
    validate_host(p.ssh_proxy_host, "SSH proxy host")
    for port in (p.proxy_port, p.ssh_proxy_port, p.port):
        validate_port(port)
    for path in (p.known_hosts, p.identity_file, p.certificate_file):
        validate_path(path)
    if p.reuse_tag:
        validate_path(p.reuse_tag)
    if p.tls_ca_file:  # an argument of the openssl hop's ProxyCommand
        validate_path(p.tls_ca_file)
    if p.login is not None:
        validate_login(p.login)
    if p.proxy_command not in PROXY_COMMANDS:
        raise UsageError(
            f"invalid proxy command form {p.proxy_command!r}: use one of {', '.join(PROXY_COMMANDS)}"
        )
    if p.proxy_command == "openssh" and p.conn_upgrade:
        raise UsageError(
            "the openssh form cannot reach this proxy: it is behind an L7 load balancer, which "
            "only tsh's connection upgrade gets through; use --proxy-command=tsh"
        )
    if p.tls_ca_file:
        validate_path(p.tls_ca_file)
    if p.proxy_command == "tsh":
        if not p.executable:
            raise UsageError("cannot find the tsh executable for ProxyCommand")
        _executable_words(p.executable)


def _executable_words(executable: Sequence[str]) -> list[str]:
    """``executable`` as single-quoted words of the ProxyCommand: the program's path,
    plain words such as ``-m tsh``, and any other path (a zipapp's).

    Raises:
        UsageError: a word that is neither; InvalidNameError: an unsafe path.
    """
    words = [shell_word(validate_path(executable[0]))]
    for word in executable[1:]:
        if re.fullmatch(r"[A-Za-z0-9._-]+", word):
            words.append(shell_word(word))
        elif word.startswith("/"):
            words.append(shell_word(validate_path(word)))
        else:
            raise UsageError(f"unexpected word {word!r} in the tsh command")
    return words


def tsh_proxy_command(
    executable: Sequence[str], cluster: str, proxy_host: str, proxy_port: int, reuse: bool = True,
    registered_port: bool = False,
) -> str:
    """``'<tsh>' proxy ssh --cluster='C' --proxy='HOST:PORT' '%r@%h:%p'``.

    ``reuse`` False adds ``--no-reuse`` (every hop logs in to the proxy itself).
    ``registered_port``: the target's port is ``0`` instead of ``%p``: the proxy
    dials the node's registered port, as for real tsh without ``--port``.

    ``executable`` is how to start tsh (see SSHConfigParams). OpenSSH hands
    this line to the user's shell, so every word is validated and then
    single-quoted for it (tsh._core.names.shell_word), ``%r@%h:%p`` included: ssh
    expands those tokens before the shell reads the line.

    Raises:
        InvalidNameError: an unsafe cluster, host, port or path.
    """
    cluster = validate_cluster_name(cluster)
    proxy = join_host_port(validate_host(proxy_host, "proxy host"), validate_port(proxy_port))
    exe = " ".join(_executable_words(executable))
    no_reuse = "" if reuse else "--no-reuse "
    return (
        f"{exe} proxy ssh --cluster={shell_word(cluster)} --proxy={shell_word(proxy)} "
        f"{no_reuse}{shell_word('%r@%h:0' if registered_port else '%r@%h:%p')}"
    )


#: The all-OpenSSH hop as a POSIX sh script that reads every value from its
#: positional arguments, so nothing from the profile is ever part of the
#: script's text. ssh turns "%%" into "%": the script sees ${2%."$7"}, which
#: strips a ".<proxy host>" and then a ".<cluster>" suffix off the node name;
#: an IPv6 node gets brackets, as the subsystem's grammar wants (docs/protocol.md §8).
_OPENSSH_HOP_SCRIPT = (
    'h=${2%%."$7"}; h=${h%%."$8"}; case $h in *:*) h="[$h]";; esac; '
    "exec ssh -o ForwardAgent=yes HOP_OPTIONS "
    '-o "$4" -o "$5" -i "$6"IDENTITIES_ONLY '
    '-p "$9" -l "$1" -s "${10}" "proxy:$h:$3@${11}"'
)


#: The hop with reuse (tsh._openssh.reuse, docs/protocol.md §19). ${12} is the
#: tag file: "<valid_before> <control path prefix>", read with the shell's own
#: `read`. With a valid certificate, the control socket is "<prefix>-<login>",
#: and the hop runs with "ControlMaster auto" and ControlPersist at most the
#: certificate's remaining validity: it rides the master listening there, or
#: (none, or a dead one's socket, which OpenSSH unlinks) logs in and becomes
#: the master itself, which then forks to the background (with a keep-alive:
#: tsh._openssh.reuse.MASTER_KEEPALIVE). The remaining
#: validity comes from `date` only in a certificate's last quarter hour: until
#: then the tag file's mtime (tsh._openssh.reuse.fresh_until) is newer than
#: the "<socket>.now" file the hop has just written (a hop that cannot write
#: it goes alone: it could not take the lock either; written by `true`, as a
#: failed redirection on the special built-in `:` ends the shell). Hops that find no
#: socket first take a lock file holding the shell's pid (``set -C``: created
#: only if it does not exist, with no subshell: a failed redirection does not
#: end the shell for a regular built-in like echo; a dead holder's lock
#: is removed; a zombie counts as dead: `kill -0` succeeds on one, and where
#: no init reaps them, in some containers, a stale lock would hold every cold
#: start for 15 s; its state is read from /proc with `read`, or where there is
#: none from `ps`, 5 ms), so that only one of many started together logs in: the others
#: wait for its socket. An expired certificate stops the master (no new session
#: rides it; open ones run on) and the hop goes alone.
_OPENSSH_REUSE_SCRIPT = (
    'h=${2%%."$7"}; h=${h%%."$8"}; case $h in *:*) h="[$h]";; esac; c=; p=0; '
    'if [ -n "${12}" ] && read -r v c < "${12}"; then '
    'case $c in /*) ;; *) c=;; esac; case $1 in ""|*[/%%$]*) c=;; esac; '
    '[ "$v" -ge 0 ] || c=; [ -n "$c" ] && c="$c-$1"; '
    'if [ -z "$c" ] || [ ${#c} -gt MAX_PATH ]; then c=; '
    'elif true > "$c.now"; then if [ "${12}" -nt "$c.now" ]; then p=PERSIST; '
    'else n=$(date +%%s); p=$((v-n)); [ $p -gt PERSIST ] && p=PERSIST; fi; else c=; fi; '
    'if [ $p -le 0 ]; then [ -n "$c" ] && ssh -F /dev/null -S "$c" -O stop _; c=; '
    'else l=$c.lock; i=0; set -C; '
    'until [ -S "$c" ] || [ $i -ge 300 ]; do i=$((i+1)); '
    'echo $$ > "$l" && break; '
    'read -r o < "$l" && [ -n "$o" ] && { kill -0 "$o" && { read -r _ _ s _ < "/proc/$o/stat" '
    '|| s=$(ps -o stat= -p "$o"); case $s in Z*) false;; esac; } '
    '|| { rm -f "$l"; continue; }; }; '
    "sleep 0.05; done; fi; fi </dev/null >/dev/null 2>&1; "
    "exec ssh -o ForwardAgent=yes HOP_OPTIONS "
    '-o "$4" -o "$5" -i "$6"IDENTITIES_ONLY '
    '${c:+-S} ${c:+"$c"} ${c:+-oControlMaster=auto} ${c:+-oControlPersist=$p} KEEPALIVE'
    '-p "$9" -l "$1" -s "${10}" "proxy:$h:$3@${11}"'
)


def _openssh_proxy_command(p: SSHConfigParams, cluster: str) -> str:
    # OpenSSH runs ProxyCommand through the user's shell, which may not be
    # POSIX (fish, csh), so the logic is a single-quoted `sh -c` script and
    # every value is one single-quoted argument after it; ssh's %r %h %p
    # arrive as $1..$3. %h arrives lower-cased (ssh lower-cases host names),
    # hence the lower-cased suffixes.
    reuse = p.reuse and bool(p.reuse_tag)
    script = (
        (_OPENSSH_REUSE_SCRIPT if reuse else _OPENSSH_HOP_SCRIPT)
        .replace("HOP_OPTIONS", " ".join(f"-o {option}" for option in HOP_OPTIONS))
        .replace("IDENTITIES_ONLY", " -o IdentitiesOnly=yes" if p.identities_only else "")
        .replace("MAX_PATH", str(CONTROL_PATH_MAX))
        .replace("PERSIST", str(PERSIST_SECONDS))
        .replace("KEEPALIVE", "".join(f"${{c:+-o{option}}} " for option in MASTER_KEEPALIVE))
    )
    if p.tls_ca_file:  # TLS routing: the hop reaches the web port through openssl s_client
        slot = "${13}" if reuse else "${12}"  # after the reuse tag file, when there is one
        script = script.replace(' -p "$9"', f' -o "{slot}" -p "$9"')
    args = [
        "%r",
        "%h",
        "%p",
        f'UserKnownHostsFile "{p.known_hosts}"',
        f'CertificateFile "{p.certificate_file}"',
        p.identity_file,
        p.proxy_host.lower(),
        cluster.lower(),
        str(p.ssh_proxy_port),
        p.ssh_proxy_host,
        cluster,
    ]
    if reuse:
        args.append(p.reuse_tag)
    if p.tls_ca_file:
        words = openssl_words(p.ssh_proxy_host, p.ssh_proxy_port, p.tls_ca_file)
        args.append("ProxyCommand=" + command_line(words))
    return f"sh -c {shell_word(script)} tsh-proxy {' '.join(map(shell_word, args))}"


def render(p: SSHConfigParams) -> str:
    """Render the configuration text for ``p``.

    Raises:
        InvalidNameError: a name or path could inject a directive or widen a pattern.
        UsageError: no cluster, an unknown ProxyCommand form, or no tsh executable.
    """
    _check(p)
    user = f'    User "{p.login}"\n' if p.login is not None else ""
    algorithms = ""
    if p.ssh_version is not None and p.ssh_version < (7, 8):
        algorithms = f"    HostKeyAlgorithms {_LEGACY_HOST_KEY_ALGORITHMS}\n"
    identities_only = "    IdentitiesOnly yes\n" if p.identities_only else ""
    out = [f"{BEGIN_MARKER}{p.proxy_host} by tsh\n\n"]
    # ssh lower-cases the host it matches, but not the patterns: lower them here.
    proxy_pattern = p.proxy_host.lower()
    for cluster in p.clusters:
        pattern = cluster.lower()
        if p.proxy_command == "tsh":
            command = tsh_proxy_command(p.executable, cluster, p.proxy_host, p.proxy_port, p.reuse)
        else:
            command = _openssh_proxy_command(p, cluster)
        out.append(
            f"# Common flags for all {cluster} hosts\n"
            f"Host *.{pattern} {proxy_pattern}\n"
            f'    UserKnownHostsFile "{p.known_hosts}"\n'
            f'    IdentityFile "{p.identity_file}"\n'
            f"{identities_only}"
            f'    CertificateFile "{p.certificate_file}"\n'
            f"{algorithms}"
            f"{user}"
            "\n"
            f"# Flags for all {cluster} hosts except the proxy\n"
            f"Host *.{pattern} !{proxy_pattern}\n"
            f"    Port {p.port}\n"
            f"    ProxyCommand {command}\n"
            f"{user}"
        )
    out.append(f"\n{END_MARKER}\n")
    return "".join(out)


def merge(existing: str, block: str, proxy_host: str) -> str:
    """Put ``block`` into the ssh_config text ``existing``.

    The previously generated block for ``proxy_host`` (from its begin marker
    line to the next end marker line) is replaced in place; without one,
    ``block`` is appended after a blank line. Everything else stays byte for
    byte, so merging the same block twice is a no-op.

    Raises:
        UsageError: a begin marker without an end marker (a hand-edited file).
    """
    begin = f"{BEGIN_MARKER}{proxy_host} by tsh"
    lines = existing.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\r\n") == begin), None)
    if start is None:
        if not existing:
            return block
        sep = "" if existing.endswith("\n") else "\n"
        return f"{existing}{sep}\n{block}"
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].rstrip("\r\n") == END_MARKER),
        None,
    )
    if end is None:
        raise UsageError(
            f"the generated block for {proxy_host} has no {END_MARKER!r} line; "
            "fix the file by hand"
        )
    return "".join(lines[:start]) + block + "".join(lines[end + 1 :])
