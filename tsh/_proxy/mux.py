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
  disk, a private ``ssh-agent`` holding key and certificate for the
  certificate's remaining validity, on ``<socket>.<random>.agent`` (each
  master its own name); after ``-k only``, the user's agent, which holds the
  key. It is not set up before the hop starts (that cost every cold start
  ~15 ms, and only a recording proxy ever asks): a gate socket of ours
  (tsh._agent.private.AgentGate) stands at that name, and a guard shell in
  a session of its own waits. When the proxy first asks, or else once the
  first session is over (or once we die), the guard starts the agent, loads
  it with ``ssh-add``, renames its socket over the gate's name, and later
  stops the agent once the master is gone. What came to the gate before
  waits and is relayed; we leave only once the agent is in place.
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

from .._agent.private import AgentGate
from .._openssh.reuse import (
    CONTROL_OPTIONS,
    MASTER_KEEPALIVE,
    control_path,
    persist_seconds,
    read_tag,
    stop_master,
)

__all__ = ["Master", "master_for"]

#: Seconds a hop waits for another hop's master (then it goes alone).
_WAIT = 20.0
#: Seconds the master's own agent may take to start.
_AGENT_TIMEOUT = 10.0
#: A new master's keep-alive options (tsh._openssh.reuse.MASTER_KEEPALIVE), as ssh words.
_KEEPALIVE_WORDS = tuple(word for option in MASTER_KEEPALIVE for word in ("-o", option))
#: The socket name's separator for each (dial mode, upgrade) of tsh._proxy.dial.
_DIAL_SEPARATORS = {("tcp", None): "+", ("tls", None): "+t+", ("upgrade", "websocket"): "+w+",
                    ("upgrade", "legacy"): "+l+"}  # fmt: skip


class Master:
    """The master connection a hop rides (``persist`` None) or becomes.

    A hop that becomes the master holds ``<socket>.lock`` (others wait) until
    :meth:`release`, which also stops the master's agent if no master came of it.
    """

    __slots__ = ("path", "persist", "agent", "_lock_fd")

    def __init__(self, path: str, persist: int | None = None, lock_fd: int = -1,
                 agent: _Agent | None = None) -> None:  # fmt: skip
        self.path, self.persist, self._lock_fd = path, persist, lock_fd
        #: The new master's own agent, which it forwards; None: riding, or ``$SSH_AUTH_SOCK``.
        self.agent = agent

    @property
    def agent_sock(self) -> str | None:
        return self.agent.sock if self.agent is not None else None

    def hop_argv(self, hop: list[str]) -> list[str]:
        """``hop`` (ending ``-l LOGIN -s HOST SUBSYSTEM``) on this master's socket."""
        if self.persist is None:
            return [*hop[:-5], "-S", self.path, "-o", "ControlMaster=no", *hop[-5:]]
        # The keep-alive first: for each option, ssh takes the first value given.
        argv = [hop[0], *_KEEPALIVE_WORDS, *hop[1:-5], "-S", self.path, "-o", "ControlMaster=yes",
                "-o", f"ControlPersist={self.persist}", *hop[-5:]]  # fmt: skip
        return argv if self.agent is None else _with_forward_agent(argv, self.agent.sock)

    def serve_agent(self) -> None:
        """The hop has started: answer the proxy's agent requests (the first one
        has the agent started and loaded; each waits until it is in place)."""
        if self.agent is not None:
            self.agent.gate.serve(_AGENT_TIMEOUT, self.agent.wanted)

    def release(self) -> None:
        """Let waiting hops go on (once): they ride the master, or, if none listens, try themselves."""
        if self._lock_fd < 0:
            return
        if self.agent is not None and not _listening(self.path):
            self.agent.stop()  # no master came of it
            self.agent = None
        os.close(self._lock_fd)
        self._lock_fd = -1

    def finish(self) -> None:
        """The first session is over: put the new master's agent in place
        before we go (until then our gate serves the hops riding the master),
        or, if it cannot be, let no more hops ride it (``ssh -O stop``)."""
        self.release()
        if self.agent is None:
            return
        self.agent.wanted()
        if not self.agent.wait_in_place(_AGENT_TIMEOUT):
            stop_master(self.path)
            self.agent.stop()
        self.agent = None


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
            stop_master(path)  # no new session on an expired certificate (open ones run on)
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
            agent = _Agent.start(path, private_agent, valid_before, env)
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


#: The master's own agent's guard, in two steps. It waits for EOF on its stdin
#: (a pipe only tsh holds: closed when the proxy first asks for the agent, when
#: the first session is over, or when tsh dies, however), then runs ssh-agent,
#: which runs the second step once it listens (on $2, as $SSH_AUTH_SOCK; pid
#: $SSH_AGENT_PID): load the key and certificate ($4, and "$4-cert.pub") for $5
#: seconds, rename $2 to $3 (the socket the master forwards, till then a
#: gate), then ask the master ($1) every 10 s whether it still runs: the same
#: answer as at once, which names its pid, or, if it was not up yet (tsh died
#: before), as at the first check (a killed one fails the check; a new master
#: on the same socket, after ours died, forwards its own agent). On its way
#: out it stops the agent and removes what it named. In its own session, so
#: no terminal signal reaches it;
#: SIGTERM (the hop's master did not come up) stops it at once (``wait`` is
#: interrupted, ``sleep`` would not be).
_AGENT_GUARD = (
    """trap 'kill $SSH_AGENT_PID $! 2>/dev/null; rm -f "$2" "$3" "$4" "$4-cert.pub"' EXIT; """
    "trap 'exit' HUP TERM; "
    'ssh-add -q -t "$5" "$4" || exit; rm -f "$4" "$4-cert.pub"; mv -f "$2" "$3" || exit; '
    'm=$(CHECK) || m=; while sleep 10 & wait $!; a=$(CHECK) && [ "${m:=$a}" = "$a" ]; do :; done'
).replace("CHECK", f'ssh {" ".join(CONTROL_OPTIONS)} "$1" -O check _ 2>&1')
#: The first step ($0: the second step's script).
_AGENT_GUARD_WAIT = 'read -r _; exec ssh-agent -a "$2" sh -c "$0" tsh-agent-guard "$@"'


class _Agent:
    """A new master's own agent: the gate at :attr:`sock`, and the guard that
    starts and loads the agent once :meth:`wanted` (or once we are gone)."""

    __slots__ = ("gate", "guard", "_links", "_go", "_go_lock")

    def __init__(self, gate: AgentGate, guard: int, links: tuple[str, str], go: int) -> None:
        import _thread

        self.gate, self.guard, self._links, self._go = gate, guard, links, go
        self._go_lock = _thread.allocate_lock()  # the gate's threads call wanted() too

    @property
    def sock(self) -> str:
        """The socket the master forwards: the gate's, then the agent's."""
        return self.gate.path

    @classmethod
    def start(cls, path: str, key_and_cert: tuple[str, str], valid_before: int,
              env: dict[str, str]) -> _Agent | None:  # fmt: skip
        """Bind the gate and start the guard (waiting). None if either could not be."""
        name = f"{path}.{os.urandom(4).hex()}"
        sock, loading, link = f"{name}.agent", f"{name}.n.agent", f"{name}.id"
        links = (link, link + "-cert.pub")  # ssh-add reads the certificate from "<key>-cert.pub"
        try:
            for target, at in zip(key_and_cert, links, strict=True):
                os.symlink(target, at)
            gate = AgentGate(sock)
        except OSError:
            _remove(*links)
            return None
        lifetime = str(max(1, int(valid_before - time.time())))
        wait_end, go = os.pipe()  # close-on-exec: no other child holds ``go``
        guard = _spawn(["sh", "-c", _AGENT_GUARD_WAIT, _AGENT_GUARD, path, loading, sock, link,
                        lifetime], env, stdin=wait_end)  # fmt: skip
        os.close(wait_end)
        if guard is None:
            os.close(go)
            gate.close()
            _remove(sock, *links)
            return None
        return cls(gate, guard, links, go)

    def wanted(self) -> None:
        """Have the guard start and load the agent now (once)."""
        with self._go_lock:
            go, self._go = self._go, -1
        if go >= 0:
            os.close(go)

    def wait_in_place(self, timeout: float) -> bool:
        """Wait until the loaded agent is at :attr:`sock`; False if it never will be
        (the guard gave up, and stopped the agent, or hangs)."""
        return self.gate.wait_replaced(timeout, self._guard_runs)

    def _guard_runs(self) -> bool:
        try:
            return os.waitpid(self.guard, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def stop(self) -> None:
        """Stop the guard (which stops the agent, if it ran) and the gate."""
        import signal

        try:
            os.kill(self.guard, signal.SIGTERM)
        except OSError:
            pass
        self.wanted()  # nothing to wait for any more (the guard is gone or going)
        if self.gate.replaced() is False:  # no guard came to remove the gate's name
            _remove(self.sock)
        _remove(*self._links)  # (a guard stopped while it waited never loaded the key)
        self.gate.close()


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def _spawn(argv: list[str], env: dict[str, str], stdin: int = -1) -> int | None:
    """Spawn ``argv`` in its own session, stdio on /dev/null (or stdin on ``stdin``)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        fds = [stdin if stdin >= 0 else devnull, devnull, devnull]
        return os.posix_spawnp(argv[0], argv, env, setsid=True,
                               file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(fds)])
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
