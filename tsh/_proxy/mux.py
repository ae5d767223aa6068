"""`tsh proxy ssh`'s share of hop reuse: ride the master, or become it.

See tsh._openssh.reuse for the design and its safety properties. What differs
from the all-OpenSSH form of `tsh config`:

- The socket is ``<tag>+<login>`` (a ``+`` no login holds), not ``<tag>-<login>``:
  the two forms forward different agents, so they never share a master.
  Under TLS routing it also names the dial (``<tag>+t+<login>``, through a
  connection upgrade ``+w+`` WebSocket or ``+l+`` legacy): a master is
  dialled exactly as its first hop was, and a hop whose dial differs
  (``$TELEPORT_TLS_ROUTING_CONN_UPGRADE`` set, say) never rides a master
  dialled another way.
- A hop that finds no master becomes it: its ssh runs with ``ControlMaster
  yes`` and ``ControlPersist``, so once logged in OpenSSH forks the master to
  the background and the hop's own process goes on as the master's first
  client (one login, one ssh process, as without reuse). Its drops are
  retried by the hop's supervisor like any hop's.
- The master forwards an agent that lives as long as it does: with the key on
  disk, a private ``ssh-agent`` on ``<socket>.<pid>.agent`` holding key and
  certificate for the certificate's remaining validity (each master its own
  name: an old master's agent removes its socket as it exits), loaded *before* the
  hop starts (a recording proxy asks for it as soon as the first session
  opens) and stopped by a small guard shell once the master is gone; after
  ``-k only``, the user's agent, which holds the key.
- Hops that find no master wait on an ``flock`` of ``<socket>.lock`` while one
  becomes it, and ride as soon as it listens.
- A hop riding a master runs with ``ControlMaster no``: it must never become a
  master (that master would forward this process's short-lived agent).

Hot path: os, fcntl, time and posix_spawn; _socket only to see whether a
master listens.
"""

from __future__ import annotations

import os
import time

from .._openssh.reuse import control_path, persist_seconds, read_tag

__all__ = ["Master", "master_for"]

#: Seconds a hop waits for another hop's master (then it goes alone).
_WAIT = 20.0
#: Seconds the master's own agent may take to start.
_AGENT_TIMEOUT = 10.0
#: The socket name's separator for each (dial mode, upgrade) of tsh._proxy.dial.
_DIAL_SEPARATORS = {("tcp", None): "+", ("tls", None): "+t+", ("upgrade", "websocket"): "+w+",
                    ("upgrade", "legacy"): "+l+"}  # fmt: skip


class Master:
    """The master connection a hop rides (``persist`` None) or becomes.

    A hop that becomes the master holds ``<socket>.lock`` (others wait) until
    :meth:`release`, which also stops the master's agent if no master came of it.
    """

    __slots__ = ("path", "persist", "agent_sock", "_lock_fd", "_guard")

    def __init__(self, path: str, persist: int | None = None, lock_fd: int = -1,
                 agent: tuple[str, int] | None = None) -> None:  # fmt: skip
        self.path, self.persist, self._lock_fd = path, persist, lock_fd
        #: The new master's own agent, which it forwards; None: riding, or ``$SSH_AUTH_SOCK``.
        self.agent_sock: str | None = agent[0] if agent is not None else None
        self._guard: int | None = agent[1] if agent is not None else None

    def hop_argv(self, hop: list[str]) -> list[str]:
        """``hop`` (ending ``-l LOGIN -s HOST SUBSYSTEM``) on this master's socket."""
        if self.persist is None:
            return [*hop[:-5], "-S", self.path, "-o", "ControlMaster=no", *hop[-5:]]
        argv = [*hop[:-5], "-S", self.path, "-o", "ControlMaster=yes",
                "-o", f"ControlPersist={self.persist}", *hop[-5:]]  # fmt: skip
        return argv if self.agent_sock is None else _with_forward_agent(argv, self.agent_sock)

    def release(self) -> None:
        """Let waiting hops go on (once): they ride the master, or, if none listens, try themselves."""
        if self._lock_fd < 0:
            return
        if self._guard is not None and not _listening(self.path):
            import signal

            try:  # the guard stops the agent as it exits
                os.kill(self._guard, signal.SIGTERM)
            except OSError:
                pass
        os.close(self._lock_fd)
        self._lock_fd = -1


def master_for(
    tag_path: str,
    login: str,
    env: dict[str, str],
    private_agent: tuple[str, str] | None,
    dial: tuple[str, str | None] = ("tcp", None),
) -> Master | None:
    """The master for this certificate, login and dial: to ride, or to become; or None.

    ``private_agent`` is the (key, certificate) files for a new master's own
    agent, or None to forward ``$SSH_AUTH_SOCK``; ``dial`` the hop's (mode,
    upgrade), whose master is not another dial's. None: no reuse for this hop
    (no tag, a name too long, an expired certificate, an unknown dial, another
    hop's master that did not come up in time, or no agent for a new one).
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
        return Master(path)
    import fcntl

    fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + _WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if _listening(path):  # the hop holding the lock is the master now
                    os.close(fd)
                    return Master(path)
                if time.monotonic() > deadline:
                    os.close(fd)
                    return None
                time.sleep(0.01)
        if _listening(path):  # it came up just before the lock was let go
            os.close(fd)
            return Master(path)
        if os.path.lexists(path):
            os.unlink(path)  # a dead master's socket
        agent = None
        if private_agent is not None:
            agent = _start_agent(path, private_agent, valid_before, env)
            if agent is None:
                os.close(fd)
                return None
        return Master(path, persist_seconds(valid_before, now), fd, agent)
    except BaseException:
        os.close(fd)
        raise


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


#: Stops the master's own agent ($1, its pid) once the master is gone: waits
#: for the master's socket $2, then asks the master every 10 s whether it still
#: runs (a killed master fails the check too). In its own session, so no
#: terminal signal reaches it; SIGTERM (the hop's master did not come up) stops it too.
_AGENT_GUARD = (
    "trap 'kill $1 2>/dev/null' EXIT; trap 'exit' HUP TERM; i=0; "
    'until [ -S "$2" ]; do i=$((i+1)); [ $i -gt 200 ] && exit; sleep 0.1; done; '
    'while ssh -S "$2" -O check _ 2>/dev/null; do sleep 10; done'
)


def _start_agent(path: str, key_and_cert: tuple[str, str], valid_before: int,
                 env: dict[str, str]) -> tuple[str, int] | None:  # fmt: skip
    """Start the new master's agent on ``<path>.<pid>.agent`` and load key and certificate.

    Returns the agent's socket and its guard's pid, or None if the agent did
    not start or took no key. Before the hop starts: a recording proxy asks
    the master for the agent as soon as its first session opens.
    """
    import signal

    sock = f"{path}.{os.getpid()}.agent"
    if os.path.lexists(sock):
        os.unlink(sock)
    agent = _spawn(["ssh-agent", "-D", "-a", sock], env)
    if agent is None:
        return None
    guard = _spawn(["sh", "-c", _AGENT_GUARD, "tsh-agent-guard", str(agent), path], env)
    key, cert = key_and_cert
    link = path + ".id"  # ssh-add reads the certificate from "<key>-cert.pub"
    try:
        if guard is None:
            raise OSError("cannot start the agent's guard")
        for target, name in ((key, link), (cert, link + "-cert.pub")):
            if os.path.lexists(name):
                os.unlink(name)
            os.symlink(target, name)
        deadline = time.monotonic() + _AGENT_TIMEOUT
        while not _listening(sock):
            if time.monotonic() > deadline:
                raise OSError("the master's agent did not start")
            time.sleep(0.001)
        lifetime = str(max(1, int(valid_before - time.time())))
        pid = _spawn(["ssh-add", "-q", "-t", lifetime, link], {**env, "SSH_AUTH_SOCK": sock})
        if pid is None or os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
            raise OSError("ssh-add failed")
        return sock, guard
    except OSError:
        for pid in (agent, guard):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
        return None
    finally:
        for name in (link, link + "-cert.pub"):
            try:
                os.unlink(name)
            except OSError:
                pass


def _spawn(argv: list[str], env: dict[str, str]) -> int | None:
    """Spawn ``argv`` in its own session, stdio on /dev/null."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        return os.posix_spawnp(argv[0], argv, env, setsid=True,
                               file_actions=[(os.POSIX_SPAWN_DUP2, devnull, n) for n in range(3)])
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
