"""`tsh proxy ssh`'s share of hop reuse: find or start the master, tell the hop its socket.

See tsh._openssh.reuse for the design and its safety properties. What differs
from the all-OpenSSH form of `tsh config`:

- The socket is ``<tag>+<login>`` (a ``+`` no login holds), not ``<tag>-<login>``:
  the two forms forward different agents, so they never share a master.
  Under TLS routing it also names the dial (``<tag>+t+<login>``, through a
  connection upgrade ``+w+`` WebSocket or ``+l+`` legacy): the master is
  dialled exactly as the hop would be (its command line is the hop's), and
  a hop whose dial differs (``$TELEPORT_TLS_ROUTING_CONN_UPGRADE`` set, say)
  never rides a master dialled another way.
- The master forwards an agent that lives as long as it does: with the key on
  disk, a private ``ssh-agent`` on ``<socket>.agent`` holding key and
  certificate for the certificate's remaining validity, stopped by a small
  guard shell once the master is gone; after ``-k only``, the user's agent,
  which holds the key.
- Hops that find no master wait on an ``flock`` of ``<socket>.lock`` while one
  starts it. A master whose first connection is dropped (sshd's
  ``MaxStartups``) is started again after the hop's backoff; any other failure
  leaves the hop to go alone, which reports it as before.
- The hop itself runs with ``ControlMaster no``: it must never become a master
  (that master would forward this process's short-lived agent).

Hot path: os, fcntl, time and posix_spawn; _socket only to see whether a
master listens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable  # (loaded already by tsh._proxy.command)

from .._exceptions import SSHError
from .._openssh.reuse import control_path, persist_seconds, read_tag
from .retry import MAX_ATTEMPTS, backoff_delays, is_drop

__all__ = ["master_for"]

#: Seconds a hop waits for another hop's master (then it goes alone).
_WAIT = 20.0
#: Seconds a new master may take to log in.
_START_TIMEOUT = 20.0
#: The socket name's separator for each (dial mode, upgrade) of tsh._proxy.dial.
_DIAL_SEPARATORS = {("tcp", None): "+", ("tls", None): "+t+", ("upgrade", "websocket"): "+w+",
                    ("upgrade", "legacy"): "+l+"}  # fmt: skip


def master_for(
    tag_path: str,
    login: str,
    master_argv: list[str],
    env: dict[str, str],
    private_agent: tuple[str, str] | None,
    dial: tuple[str, str | None] = ("tcp", None),
    diagnose: Callable[[], str | None] | None = None,
) -> str | None:
    """The control socket of a live master for this certificate, login and dial, or None.

    ``master_argv`` is the hop's ssh command line up to (without) the
    destination words ``-l LOGIN -s HOST SUBSYSTEM``, plus ``HOST`` as its last
    word; ``private_agent`` the (key, certificate) files for the master's own
    agent, or None to forward ``$SSH_AUTH_SOCK``; ``dial`` the hop's (mode,
    upgrade), whose master is not another dial's. None: no reuse for this hop
    (no tag, a name too long, an expired certificate, an unknown dial, or no
    master could start). ``diagnose`` is asked at the master's first drop
    whether something other than a drop is wrong: OpenSSH sends a master's
    ProxyCommand's stderr (TLS routing's one-line errors) to /dev/null.

    Raises:
        SSHError: the diagnosis (under TLS routing, a proxy that ignores the ALPN).
    """
    tag = read_tag(tag_path)
    sep = _DIAL_SEPARATORS.get(dial)
    if tag is None or sep is None:
        return None
    valid_before, prefix = tag
    path = control_path(prefix, login, sep)
    if path is None:
        return None
    now = time.time()
    if valid_before <= now:
        if os.path.lexists(path):
            _control(path, "exit")  # an expired certificate's master must not carry on
        return None
    if _listening(path):
        return path
    import fcntl

    fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + _WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.01)
        if _listening(path):  # another hop started it while we waited
            return path
        if os.path.lexists(path):
            os.unlink(path)  # a dead master's socket
        persist = persist_seconds(valid_before, now)
        started = _start(path, master_argv, env, private_agent, persist, valid_before, diagnose)
        return path if started else None
    finally:
        os.close(fd)  # and with it the lock


def _listening(path: str) -> bool:
    """Does a master accept connections on ``path``?"""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _control(path: str, command: str) -> None:
    """``ssh -S PATH -O COMMAND``, waited for; its output discarded."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawnp("ssh", ["ssh", "-S", path, "-O", command, "_"], dict(os.environ),
                              file_actions=[(os.POSIX_SPAWN_DUP2, devnull, n) for n in range(3)])
        os.waitpid(pid, 0)
    except OSError:
        pass
    finally:
        os.close(devnull)


#: Keeps the master's own agent alive as long as the master: starts ``ssh-agent
#: -D`` on $1, waits for the master's socket $2, then asks the master every 10 s
#: whether it still runs (a killed master fails the check too) and, once not,
#: stops the agent. In its own session, so no terminal signal reaches it.
_AGENT_GUARD = (
    'ssh-agent -D -a "$1" </dev/null >/dev/null 2>&1 & a=$!; '
    "trap 'kill $a 2>/dev/null' EXIT; trap 'exit' HUP TERM; i=0; "
    'until [ -S "$2" ]; do i=$((i+1)); [ $i -gt 200 ] && exit; sleep 0.1; done; '
    'while ssh -S "$2" -O check _ 2>/dev/null; do sleep 10; done'
)


def _start(
    path: str,
    master_argv: list[str],
    env: dict[str, str],
    private_agent: tuple[str, str] | None,
    persist: int,
    valid_before: int,
    diagnose: Callable[[], str | None] | None = None,
) -> bool:
    """Start the master (retrying drops); True once it listens on ``path``.

    With ControlPersist, OpenSSH's master forks after logging in and its first
    process exits: that exit, with the socket listening, is the readiness sign.
    """
    host = master_argv[-1]
    argv = [*master_argv[:-1], "-N", "-o", "ControlMaster=yes", "-o", f"ControlPersist={persist}",
            "-S", path, host]
    if private_agent is not None:
        agent_sock = path + ".agent"
        argv = _with_forward_agent(argv, agent_sock)
        if os.path.lexists(agent_sock):
            os.unlink(agent_sock)
        if _spawn(["sh", "-c", _AGENT_GUARD, "tsh-agent-guard", agent_sock, path], env) is None:
            return False
    delays: list[float] = []
    for attempt in range(MAX_ATTEMPTS):
        ok, err = _spawn_and_wait(argv, env, path)
        if ok:
            return private_agent is None or _load_agent(path, private_agent, valid_before)
        if not is_drop(err) or attempt == MAX_ATTEMPTS - 1:
            return False
        if diagnose is not None:
            why, diagnose = diagnose(), None
            if why:
                raise SSHError(why)
        delays = delays or backoff_delays()
        time.sleep(delays[attempt])
    return False


def _spawn(argv: list[str], env: dict[str, str], stderr: int | None = None) -> int | None:
    """Spawn ``argv`` in its own session, stdio on /dev/null (stderr: ``stderr`` if given)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        return os.posix_spawnp(
            argv[0], argv, env, setsid=True,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                          (os.POSIX_SPAWN_DUP2, devnull if stderr is None else stderr, 2)],
        )  # fmt: skip
    except OSError:
        return None
    finally:
        os.close(devnull)


def _with_forward_agent(argv: list[str], sock: str) -> list[str]:
    """``argv`` forwarding the agent at ``sock`` (whatever it forwarded before)."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "-o":
            option = next(words)
            if option.startswith("ForwardAgent="):
                continue
            out += [word, option]
        else:
            out.append(word)
    return [out[0], "-o", f'ForwardAgent="{sock}"', *out[1:]]


def _spawn_and_wait(argv: list[str], env: dict[str, str], path: str) -> tuple[bool, str]:
    """Start the master; (listening, what it said on stderr if not)."""
    import select

    err_r, err_w = os.pipe()
    try:
        pid = _spawn(argv, env, err_w)
    finally:
        os.close(err_w)
    if pid is None:
        os.close(err_r)
        return False, "cannot start ssh"
    said = b""
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if select.select([err_r], [], [], 0.005)[0]:
                data = os.read(err_r, 4096)
                said += data
                if not data:  # logged in and forked (or failed): its first process ends
                    break
            elif os.path.exists(path) and _listening(path):
                break
        else:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        return _listening(path), said.decode(errors="replace")
    finally:
        os.close(err_r)  # the master writes nothing we need from now on (ssh ignores SIGPIPE)


def _load_agent(path: str, key_and_cert: tuple[str, str], valid_before: int) -> bool:
    """Put key and certificate into the master's own agent (``ssh-add`` reads ``<key>-cert.pub``)."""
    key, cert = key_and_cert
    link = path + ".id"
    try:
        for target, name in ((key, link), (cert, link + "-cert.pub")):
            if os.path.lexists(name):
                os.unlink(name)
            os.symlink(target, name)
        deadline = time.monotonic() + _START_TIMEOUT
        while not _listening(path + ".agent"):  # the guard's ssh-agent
            if time.monotonic() > deadline:
                raise OSError("the master's agent did not start")
            time.sleep(0.002)
        lifetime = str(max(1, int(valid_before - time.time())))
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            pid = os.posix_spawnp(
                "ssh-add", ["ssh-add", "-q", "-t", lifetime, link],
                {**os.environ, "SSH_AUTH_SOCK": path + ".agent"},
                file_actions=[(os.POSIX_SPAWN_DUP2, devnull, n) for n in range(3)],
            )  # fmt: skip
            status = os.waitpid(pid, 0)[1]
        finally:
            os.close(devnull)
        if os.waitstatus_to_exitcode(status) != 0:
            _control(path, "exit")
            return False
        return True
    except OSError:
        _control(path, "exit")
        return False
    finally:
        for name in (link, link + "-cert.pub"):
            try:
                os.unlink(name)
            except OSError:
                pass
