"""Hop reuse: one authenticated OpenSSH connection to the proxy, shared by many hops.

Every connection through the proxy pays two SSH handshakes, the proxy's and
the node's. OpenSSH's connection multiplexing removes the first: a *master*
``ssh`` logs in to the proxy once and listens on a control socket; each hop
is then an ``ssh -S <socket>`` that asks the master for a new session, the
``proxy:<host>:<port>@<cluster>`` subsystem (docs/protocol.md §19). OpenSSH
stays in the data path: the master reads and writes the hop's own descriptors,
which the client passes it.

What keeps this safe (each with a test):

- Control sockets live in ``<home>/mux`` (0700). Their name is
  ``<tag>-<login>``, where the tag hashes proxy, tsh user and the certificate
  itself: two profiles, two logins or two certificates never share a master.
  The name's length is checked against the Unix socket limit (with room for
  the ``.XXXXXXXXXXXXXXXX`` OpenSSH binds first); too long means no reuse.
- At login the tag is written to a small file beside the certificate,
  ``<valid_before> <mux dir>/<tag>``: the all-OpenSSH form reads it with the
  shell's ``read``, `tsh proxy ssh` with one ``open``. No tag file, no reuse.
  Its mtime is :func:`fresh_until`: before then the certificate outlives a
  full ``ControlPersist``, which the all-OpenSSH form checks with ``test -nt``
  against a file it has just written, instead of running ``date`` (1.5 ms per
  connection) on all but a certificate's last quarter hour.
- A master's ``ControlPersist`` (idle time) is at most the certificate's
  remaining validity; a hop whose certificate has expired stops the master
  and goes to the proxy itself (which refuses it), so an expired certificate
  never rides an old master. A re-login and a logout stop the old masters
  too. Stopped (:func:`stop_master`), never killed: no new session joins, the
  open ones finish, as real tsh's sessions outlive certificate and logout.
- The master forwards to the proxy an agent that lives as long as it does, so
  a recording proxy gets the agent on every reused session; the node gets one
  only when the user's own ssh asks (``-A``), as without reuse.
- A dead master's socket is unlinked by OpenSSH (``ControlMaster auto``),
  and the hop connects by itself, transparently.

Imported by `tsh proxy ssh` on every connection: stdlib ``os`` only.
"""

from __future__ import annotations

import os

__all__ = [
    "CONTROL_OPTIONS",
    "CONTROL_PATH_MAX",
    "MASTER_KEEPALIVE",
    "close_masters",
    "PERSIST_SECONDS",
    "TAG_FILE",
    "control_path",
    "fresh_until",
    "parse_tag",
    "persist_seconds",
    "read_tag",
    "stop_master",
    "tag_text",
]

#: Idle seconds a master waits for the next hop (capped by the certificate).
PERSIST_SECONDS = 600
#: Longest control path: sun_path holds 104 bytes on macOS/BSD (108 on Linux)
#: with the NUL, and OpenSSH binds ``<path>.<16 random characters>`` first.
CONTROL_PATH_MAX = 103 - 17
#: Seconds of clock difference tolerated between this host and the file system
#: that stamps the all-OpenSSH form's "now" file (a network home directory).
CLOCK_MARGIN_SECONDS = 300
#: ``ssh -O`` to a master: ``-F /dev/null`` as the hops have (a user's ssh_config
#: with an option this OpenSSH refuses, or a slow ``Match exec``, must not stop a
#: logout from closing the masters); then ``-S`` and the control path.
CONTROL_OPTIONS = ("-F", "/dev/null", "-S")
#: A master's keep-alive: with no answer from the proxy for 30-40 s it ends.
#: A master outlives the network it logged in over (a laptop's sleep, another
#: Wi-Fi, a VPN gone down: its packets vanish, and TCP gives up only after some
#: 15 minutes), and every hop riding it would wait as long; a hop without a
#: master dials afresh. Shorter would free those hops sooner, but end every
#: session on the master in a shorter outage (a train's, a Wi-Fi roam) that a
#: session of its own (the hops' 30 s, three times) rides out.
MASTER_KEEPALIVE = ("ServerAliveInterval=10", "ServerAliveCountMax=3")
#: Name of the tag file in ``keys/<proxy>/<user>-ssh/``.
TAG_FILE = "reuse"
#: Hex digits of the tag (64 bits: two certificates never meet by chance).
_TAG_LEN = 16
#: Shortest login: a prefix that leaves no room for one is useless.
_MIN_LOGIN = 1


def tag_text(mux_dir: str, proxy_host: str, user: str, cert_line: str, valid_before: int) -> str | None:
    """The tag file's text for a new certificate, or None when reuse cannot work here.

    None: the control path would be too long even for a one-letter login, or
    the directory's name is not plain ASCII without characters that ssh
    expands in ``ControlPath`` (``%``, ``$``, ``~``) or the shell splits on.
    """
    import hashlib  # at login only

    digest = hashlib.sha256("\0".join((proxy_host, user, cert_line.strip())).encode()).hexdigest()
    prefix = os.path.join(mux_dir, digest[:_TAG_LEN])
    if not prefix.isascii() or any(c in prefix for c in "%$~\"'\\`") or not prefix.isprintable():
        return None
    if any(c.isspace() for c in prefix) or len(prefix) + 1 + _MIN_LOGIN > CONTROL_PATH_MAX:
        return None
    return f"{int(valid_before)} {prefix}\n"


def read_tag(path: str) -> tuple[int, str] | None:
    """(valid_before, control path prefix) from a tag file, or None (missing, unreadable, odd)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(512)
    except (OSError, ValueError):
        return None
    return parse_tag(text)


def parse_tag(text: str) -> tuple[int, str] | None:
    """(valid_before, control path prefix) from a tag file's text, or None."""
    valid_before, _, prefix = text.strip().partition(" ")
    if not valid_before.isdigit() or not prefix.startswith("/") or " " in prefix:
        return None
    return int(valid_before), prefix


def control_path(prefix: str, login: str, sep: str = "-") -> str | None:
    """``<prefix>-<login>`` (``sep`` "+": `tsh proxy ssh`'s masters), or None when it
    would not fit a Unix socket's name."""
    path = f"{prefix}{sep}{login}"
    return path if len(path.encode()) <= CONTROL_PATH_MAX else None


def fresh_until(valid_before: int) -> int:
    """The tag file's mtime: until then a new master may persist its full
    :data:`PERSIST_SECONDS` (with :data:`CLOCK_MARGIN_SECONDS` to spare)."""
    return int(valid_before) - PERSIST_SECONDS - CLOCK_MARGIN_SECONDS


def persist_seconds(valid_before: int, now: float) -> int:
    """ControlPersist for a new master: :data:`PERSIST_SECONDS`, capped by the certificate."""
    return max(0, min(PERSIST_SECONDS, int(valid_before - now)))


def stop_master(path: str, timeout: float = 10.0) -> bool:
    """``ssh -O stop`` to the master at ``path``: its socket goes, no new
    session joins, the open ones finish, then it exits.

    Waits up to ``timeout`` seconds for ssh (a frozen master never answers).
    False if ssh could not be started. (posix_spawn, not subprocess: this
    runs in `tsh proxy ssh` too, where every import is start-up time.)
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawnp("ssh", ["ssh", *CONTROL_OPTIONS, path, "-O", "stop", "_"], dict(os.environ),
                              file_actions=[(os.POSIX_SPAWN_DUP2, devnull, n) for n in range(3)])
    except OSError:
        return False
    finally:
        os.close(devnull)
    import time

    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, 9)  # SIGKILL (the signal module costs start-up time)
            os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    return True


def close_masters(mux_dir: str, tag: str | None = None) -> int:
    """:func:`stop_master` for the masters of one certificate or of all
    (a re-login, ``tsh logout``).

    ``tag``: the certificate's tag file text; None for every master in
    ``mux_dir``. Returns how many were told. The hops' ``.lock`` and ``.now``
    files of those masters go too: no hop of that certificate comes any more
    (one already on its way at worst starts a master of its own).
    """
    prefix = ""
    if tag is not None:
        parsed = parse_tag(tag)
        if parsed is None:
            return 0
        prefix = os.path.basename(parsed[1])
    try:
        names = os.listdir(mux_dir)
    except OSError:
        return 0
    told = 0
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(mux_dir, name)
        if name.endswith((".lock", ".now")):
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        if name.endswith((".agent", ".id", ".id-cert.pub")):  # (the agent's guard removes those)
            continue
        told += stop_master(path)
    return told
